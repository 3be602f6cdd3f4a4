"""``replaceme distances``: the distance of every block, best marked, and a heatmap."""

from __future__ import annotations

from pathlib import Path

import click

from replaceme.cli.common import calibration_options, calibration_spec, model_options


@click.command()
@click.argument("model")
@click.option("--layers", "-n", type=int, required=True, help="Largest block size to tabulate.")
@calibration_options
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the rows as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Also write a heatmap PNG (start × block size).")
@click.option("--no-cache", is_flag=True, help="Recompute calibration statistics even if cached.")
def distances(model, layers, as_json, csv_path, plot_path, no_cache, device, dtype, trust_remote_code, **calib) -> None:
    """Show the angular distance of every block of 1..N layers of MODEL.

    The angular distance arccos(cos(x_s, x_e))/π between a block's input and
    output on the last non-pad token (lower = the block changes less) is what
    UIDL and ReplaceMe use to choose the block; the mean per-token cosine is
    LLM-Streamline's criterion. Blocks never start at layer 0. For blocks that
    end at the last layer the output is taken before the final norm.

    \b
    Example:
      replaceme distances ./model -n 4 --calib data.txt --plot dist.png
    """
    from replaceme.adapters import adapter_for
    from replaceme.calibration import build_calibration
    from replaceme.console import stdout, table
    from replaceme.distances import distance_frame
    from replaceme.loading import load_model
    from replaceme.paths import write_text_atomic
    from replaceme.pipeline import check_layers, gather_stats
    from replaceme.stats.request import StatsRequest

    spec = calibration_spec(**calib)
    net, tokenizer = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    adapter = adapter_for(net)
    check_layers(layers, adapter.num_layers(net))
    stats = gather_stats(net, adapter, build_calibration(spec, tokenizer), StatsRequest(block_sizes=set(range(1, layers + 1))),
                         use_cache=not no_cache)
    frame = distance_frame(stats, layers)
    if csv_path:
        write_text_atomic(Path(csv_path), frame.to_csv(index=False))
    if plot_path:
        from replaceme.plots import distance_heatmap

        distance_heatmap(frame, plot_path)
    if as_json:
        click.echo(frame.to_json(orient="records", indent=2))
        return
    rows = [[r.start, r.end, r.size, r.distance, r.token_cosine, "◀ best" if r.best else ""] for r in frame.itertuples()]
    stdout.print(table(f"Block distances ({stats.sequences} sequences, {stats.tokens} tokens)",
                       ["start", "end", "size", "angular distance", "mean token cos", ""], rows))
