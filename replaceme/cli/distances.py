"""``replaceme distances``: the distance of every block, best marked, and a heatmap."""

from __future__ import annotations

from pathlib import Path

import click

from replaceme.cli.common import (
    BOUNDED_INT,
    break_lock_option,
    calibration_options,
    calibration_spec,
    format_option,
    load_for_command,
    model_options,
    memory_settings,
    offload_option,
    statistics_options,
)


@click.command()
@click.argument("model")
@click.option("--layers", "-n", type=BOUNDED_INT, required=True, help="Largest block size to tabulate.")
@click.option("--loss", is_flag=True,
              help="Also compensate every block with --method and measure the loss on held-out calibration batches.")
@click.option("--method", "-m", default="replaceme-lstsq", show_default=True, help="Method whose compensation --loss applies.")
@click.option("--compensator", help="Use this compensator instead of the method's (with --loss).")
@calibration_options
@model_options
@offload_option("the calibration pass and, with --loss, every block's scoring")
@statistics_options
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the rows as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Also write a heatmap PNG (start × block size).")
@click.option("--overwrite", is_flag=True, help="Replace existing --csv/--plot files (only ones replaceme wrote, unchanged).")
@break_lock_option
@click.option("--no-cache", is_flag=True, help="Recompute calibration statistics even if cached.")
@format_option
def distances(model, layers, loss, method, compensator, as_json, csv_path, plot_path, overwrite, break_lock, no_cache, device, dtype,
              trust_remote_code, offload, disk_budget, memory_budget, stats_passes, spill_dir, gram_device, fmt,
              **calib) -> None:
    """Show the angular distance of every block of 1..N layers of MODEL.

    The angular distance arccos(cos(x_s, x_e))/π between a block's input and
    output on the last non-pad token (lower = the block changes less) is what
    UIDL and ReplaceMe use to choose the block; the mean per-token cosine is
    LLM-Streamline's criterion. Blocks never start at layer 0. For blocks that
    end at the last layer the output is taken before the final norm.

    Distances are proxies. With --loss every block is also compensated the way
    --method does it (LSTSQ by default) and scored by what the model loses:
    next-token loss, perplexity and KL to the unpruned model on held-out
    calibration batches the compensation did not fit (what the
    calibration-loss selector minimises). The heatmap then has both panels.

    \b
    Example:
      replaceme distances ./model -n 4 --calib data.txt --plot dist.png
      replaceme distances ./model -n 2 --calib data.txt --loss -m replaceme-lstsq --plot blocks.png
    """
    from replaceme.console import print_rows
    from replaceme.distances import distance_frame
    from replaceme.checks import check_layer_budget, check_model_inputs, check_text_input
    from replaceme.errors import ReplacemeError
    from replaceme.outputs import check_work_dirs, output_file, write_text_atomic
    from replaceme.outputs.lock import breaking_locks
    from replaceme.pipeline import check_layers, prepare
    from replaceme.plots import FORMATS
    from replaceme.registry import adapter_for
    from replaceme.stats.request import StatsRequest

    spec = calibration_spec(**calib)
    memory = memory_settings(dict(offload=offload, disk_budget=disk_budget, memory_budget=memory_budget,
                                  stats_passes=stats_passes, spill_dir=spill_dir, gram_device=gram_device))
    check_model_inputs(model, device)
    check_layer_budget(layers, model)
    check_text_input(spec.text_source, "--calib")
    if plot_path and Path(plot_path).suffix.lower() not in FORMATS:
        raise ReplacemeError(f"--plot {plot_path}: give a file name ending in {', '.join(FORMATS)}")
    if csv_path and plot_path and Path(csv_path).expanduser().resolve() == Path(plot_path).expanduser().resolve():
        raise ReplacemeError("--csv and --plot name the same file")
    resolved = None
    if loss:
        from replaceme.methods import resolve_method

        resolved = resolve_method(method, compensator=compensator)
    from replaceme.distances import loss_request
    from replaceme.preflight import Intent, preflight
    from replaceme.settings import LoadSettings

    preflight(Intent(model, methods=[resolved] if resolved else [], layers=[layers], calibration=spec,
                     scores_on_holdout=loss,
                     loading=LoadSettings(device=device, dtype=dtype, trust_remote_code=trust_remote_code), memory=memory,
                     extra=(lambda num_layers: loss_request(resolved, num_layers, layers)) if resolved else None))
    inputs = [model, spec.text_source.base]
    check_work_dirs(inputs, spill_dir=spill_dir, cache=not no_cache)
    with breaking_locks(break_lock), \
            output_file(csv_path, overwrite=overwrite, inputs=inputs, option="--csv", suffixes=(".csv", ".tsv", ".txt")) as csv_out, \
            output_file(plot_path, overwrite=overwrite, inputs=inputs, option="--plot", suffixes=FORMATS) as plot_out:
        net, tokenizer, offloaded = load_for_command(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     offload=offload, disk_budget=disk_budget)
        adapter = adapter_for(net)
        num_layers = adapter.num_layers(net)
        check_layers(layers, num_layers)
        request = StatsRequest(block_sizes=set(range(1, layers + 1)))
        scorer = None
        if resolved is not None:
            from replaceme.scoring import PlanScorer

            resolved.check_model(adapter)  # again on the loaded model (a hub id is first seen here)
            request = request.union(loss_request(resolved, num_layers, layers))
        stats = prepare(net, adapter, [], spec, tokenizer, extra=request, use_cache=not no_cache, seed=spec.seed,
                        offloaded=offloaded, memory=memory).stats
        if resolved is not None:
            scorer = PlanScorer(net, adapter, stats, resolved.compensator, resolved.merger, offloaded=offloaded,
                                device=offloaded.device if offloaded is not None else None)
        frame = distance_frame(stats, layers, scorer)
        if csv_out:
            write_text_atomic(csv_out, frame.to_csv(index=False), replace=overwrite)
        if plot_out:
            from replaceme.plots import distance_heatmap

            extra = {"ppl": f"Held-out perplexity after {resolved.compensator.name}"} if resolved is not None else None
            distance_heatmap(frame, plot_out, extra=extra, replace=overwrite)
    if as_json:
        click.echo(frame.to_json(orient="records", indent=2))
        return
    columns = ["start", "end", "size", "angular distance", "mean token cos", ""]
    rows = [[r.start, r.end, r.size, r.distance, r.token_cosine, "◀ best" if r.best else ""] for r in frame.itertuples()]
    if loss:
        columns[-1:] = ["held-out loss", "ppl", "KL", ""]
        rows = [[*row[:5], r.loss, r.ppl, r.kl, " ".join(m for m, on in (("◀ best distance", r.best), ("◀ best loss", r.best_loss)) if on)]
                for row, r in zip(rows, frame.itertuples())]
    title = f"Block distances ({stats.sequences} sequences, {stats.tokens} tokens)"
    if loss:
        title += f"; loss after {resolved.compensator.name} on {stats.sample.holdout and sum(b.tokens for b in stats.sample.holdout)} held-out tokens"
    print_rows(title, columns, rows, fmt=fmt)
