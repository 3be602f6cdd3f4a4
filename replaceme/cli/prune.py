"""``replaceme prune``: prune one model with one method and save it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from replaceme.cli.common import (
    BOUNDED_INT,
    break_lock_option,
    calibration_options,
    calibration_spec,
    heal_data_spec,
    heal_options,
    merge_file_settings,
    model_options,
    memory_settings,
    offload_option,
    parse_kv,
    statistics_options,
)


@click.command()
@click.argument("model", required=False)
@click.option("--method", "-m", help="Method name (see 'replaceme methods').")
@click.option("--layers", "-n", type=BOUNDED_INT, help="Net number of decoder layers to remove.")
@click.option("--selector", help="Use this selector instead of the method's.")
@click.option("--compensator", help="Use this compensator instead of the method's.")
@click.option("-o", "--option", "options", type=(str, str), multiple=True, metavar="KEY VALUE",
              help="Method option (repeatable), e.g. -o alpha 1e-3.")
@calibration_options
@heal_options()
@model_options
@click.option("--output", type=click.Path(file_okay=False), help="Directory for the pruned model.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@break_lock_option
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML with these settings (our names, or ReplaceMe reference keys); flags override it.")
@click.option("--no-cache", is_flag=True, help="Recompute calibration statistics even if cached.")
@offload_option("the calibration pass, plan scoring and compensation; the pruned checkpoint is written by streaming")
@click.option("--calib-4bit", "calib_4bit", is_flag=True,
              help="Run the calibration pass on a 4-bit (bitsandbytes) copy of the model, then prune the full "
                   "weights (the reference's use_4bit). Needs a CUDA GPU; changes the statistics.")
@statistics_options
@click.option("--base-model", metavar="HUB_ID",
              help="The Hub id the model card names as base_model, for a local copy of a Hub model "
                   "(default: MODEL's own id when it is one or lies in the Hub's cache; none for other local models).")
@click.option("--strict", is_flag=True, help="Refuse -o options that the chosen configuration does not read "
                                             "(otherwise a warning, and pruning.json records them as ignored).")
@click.option("--save-transforms", is_flag=True,
              help="Also write the estimated maps and the removed blocks beside the model as "
                   "transforms.safetensors (the reference's save_transform_only; the model keeps them folded in).")
@click.option("--json", "as_json", is_flag=True, help="Print pruning.json to stdout.")
@click.pass_context
def prune(ctx: click.Context, model, method, layers, selector, compensator, options, output, overwrite, break_lock,
          config_file, no_cache, offload, disk_budget, calib_4bit, gram_device, spill_dir, base_model, strict,
          save_transforms, stats_passes, memory_budget, as_json, device, dtype, trust_remote_code, heal, heal_data, heal_column,
          heal_split, heal_samples, **calib) -> None:
    """Prune MODEL (directory, hub id, or 'demo') and save a standard model directory.

    --layers N always means the result has N fewer decoder layers. The output
    holds safetensors weights, config, tokenizer and pruning.json (method,
    options, blocks removed, calibration, seed, versions, time and memory per
    stage). It loads with plain AutoModelForCausalLM.from_pretrained.

    \b
    Examples:
      replaceme prune meta-llama/Llama-2-7b-hf -m replaceme-lstsq -n 8 \\
          --calib wikitext:wikitext-2-raw-v1 --output llama-24l/
      replaceme prune ./model -m uidl -n 2 --calib data.jsonl --calib-column text --output out/
      replaceme prune ./model -m block-removal -n 2 -o start 10 --calib data.txt --output out/
      replaceme prune --config reference.yaml
      replaceme prune ./llama-70b -m replaceme-lstsq -n 20 --calib data.txt --offload --output out/
      replaceme prune ./model -m uidl -n 2 --calib data.txt --heal lora --heal-data train.txt --output out/

    --heal NAME trains the pruned model back after the merge (distilling from the
    unpruned model by default); pruning.json then records the healer, its options,
    the data, the tokens seen, the loss curve, time and memory.
    """
    import replaceme
    from replaceme.console import stdout
    from replaceme.errors import ReplacemeError

    from replaceme.settings import LoadSettings

    opts = parse_kv(options)
    values = dict(model=model, method=method, layers=layers, output=output, selector=selector, compensator=compensator,
                  overwrite=overwrite, device=device, dtype=dtype, trust_remote_code=trust_remote_code, offload=offload,
                  disk_budget=disk_budget, spill_dir=spill_dir, gram_device=gram_device, calib_4bit=calib_4bit,
                  stats_passes=stats_passes, memory_budget=memory_budget, save_transforms=save_transforms, **calib)
    if config_file:
        from replaceme.config_file import read_config

        params, file_options = read_config(config_file)
        opts = {**file_options, **opts}
        values = merge_file_settings(ctx, params, values)
    model, method, layers, output = values["model"], values["method"], values["layers"], values["output"]
    missing = [name for name, value in (("MODEL", model), ("--method", method), ("--layers", layers), ("--output", output)) if value is None]
    if missing:
        raise ReplacemeError(f"missing {', '.join(missing)} (see 'replaceme prune --help')")
    from replaceme.checks import check_layer_budget, check_model_inputs, check_text_input
    from replaceme.outputs import check_output, check_work_dirs

    loading, memory = LoadSettings.from_values(values), memory_settings(values)
    overwrite, out = bool(values["overwrite"]), Path(output).expanduser()  # as the checks and the writes see it
    if base_model is not None:
        from replaceme.hub_ids import check_repo_id

        check_repo_id(base_model)
    spec = calibration_spec(**{k: values[k] for k in calib}) if values["calib"] else None
    # everything that can fail fast does, before the model is loaded
    check_model_inputs(model, loading.device)
    check_layer_budget(int(layers), model)
    if spec is not None:
        check_text_input(spec.text_source, "--calib")
    heal_spec = heal_data_spec(heal_data, heal_column, heal_split, heal_samples)
    if heal_data:
        check_text_input(heal_spec.text_source, "--heal-data")
    inputs = [model, spec.text_source.base if spec else None, heal_spec.text_source.base if heal_data else None]
    check_output(out, inputs=inputs, overwrite=overwrite, owner_kind="pruned-model")
    check_work_dirs(inputs, spill_dir=memory.spill_dir, output=out, cache=not no_cache or bool(heal))  # heal: checkpoints
    from replaceme.distributed import writer_lock
    from replaceme.outputs.lock import breaking_locks

    with breaking_locks(break_lock), writer_lock(out):  # under torchrun rank 0 alone writes
        result = replaceme.prune(model, method=method, layers=int(layers), calibration=spec, selector=values["selector"],
                                 compensator=values["compensator"], seed=values["seed"], use_cache=not no_cache,
                                 loading=loading, memory=memory, options=opts, base_model=base_model, strict=strict,
                                 heal=heal, heal_data=heal_spec)
        if result is None:  # a torchrun rank other than 0: its share is delivered, rank 0 writes and reports
            return
        replaceme.save_pruned(result, out, overwrite=overwrite, save_transforms=bool(values["save_transforms"]))
    if as_json:
        click.echo(json.dumps(json.loads((out / "pruning.json").read_text()), indent=2))
        return
    from replaceme.console import table

    blocks = ", ".join(str(b) for b in result.plan.blocks)
    stdout.print(f"[bold]{result.method}[/]: removed {result.layers} layer(s), blocks {blocks}; "
                 f"{result.outcome.layers_before} → {result.outcome.layers_after} layers")
    if result.healing:
        h = result.healing
        stdout.print(f"healed with [bold]{h['healer']}[/]: {h['steps']} steps, {h['tokens_seen']} tokens, held-out "
                     f"{h['options']['objective']} loss {h['loss']['heldout_start']:.4g} → {h['loss']['heldout_end']:.4g}")
    rows = [[stage, u.seconds, u.peak_rss / 2**20] for stage, u in result.usage.items()]
    stdout.print(table(None, ["stage", "seconds", "peak RSS MB"], rows))
    diagnostics = [c for c in result.outcome.compensations if c.diagnostics]
    if diagnostics:
        keys = sorted({k for c in diagnostics for k, v in c.diagnostics.items() if isinstance(v, (int, float))})
        stdout.print(table("Compensation diagnostics", ["", *(str(c.block) for c in diagnostics)],
                           [[k, *(c.diagnostics.get(k) for c in diagnostics)] for k in keys]))
    stdout.print(f"saved to {out}")
