"""``replaceme compare``: several methods, same model, same data, same evaluation, one table."""

from __future__ import annotations

from pathlib import Path

import click

from replaceme.cli.common import LimitType, calibration_options, count, model_options


@click.command()
@click.argument("model", required=False)
@click.option("--model", "model_opt", help="Same as the MODEL argument ('demo' = the embedded demo model).")
@click.option("--method", "-m", "methods", multiple=True,
              help="Method to compare (repeatable; default: every built-in method). "
                   "To run one method twice with different options, use --plan.")
@click.option("--layers", "-n", "layers", help="Layer budget(s), comma-separated: --layers 1,2  [default: 1; demo: 2,4]")
@click.option("-o", "--option", "options", type=(str, str), multiple=True, metavar="KEY VALUE",
              help="Method option for every method that has it; METHOD.KEY targets one method.")
@click.option("--include-model", "include_models", multiple=True, metavar="[LABEL=]DIR",
              help="Also evaluate a model pruned elsewhere (LLM-Pruner, SliceGPT, an earlier replaceme output) "
                   "as a row of the table (repeatable). It must share MODEL's tokenizer.")
@calibration_options
@click.option("--ppl", multiple=True, metavar="SOURCE", help="Perplexity text (repeatable): a file or hub dataset, with an optional [start:end] slice.")
@click.option("--context-length", type=count(2), default=256, show_default=True, help="Perplexity window in tokens.")
@click.option("--stride", type=count(), help="Perplexity stride (default: non-overlapping windows).")
@click.option("--max-ppl-tokens", type=count(), help="Score at most this many tokens per perplexity source.")
@click.option("--tasks", help="lm-eval tasks, comma-separated (e.g. boolq,piqa,hellaswag,arc_easy,winogrande).")
@click.option("--tasks-dir", type=click.Path(file_okay=False), help="Directory of extra lm-eval YAML tasks.")
@click.option("--task-data", type=click.Path(file_okay=False), help="Data directory of the offline task pack ($REPLACEME_TASK_DATA).")
@click.option("--num-fewshot", type=count(0), help="Few-shot examples (default: each task's own).")
@click.option("--limit", type=LimitType(), help="Documents per task (an integer, or a fraction < 1).")
@click.option("--eval-batch-size", type=count(), default=8, show_default=True, help="lm-eval and perplexity batch size.")
@model_options
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False), help="YAML with the same settings; flags override it.")
@click.option("--output", type=click.Path(file_okay=False), help="Directory for results (csv, md, json, png); re-running resumes.")
@click.option("--overwrite", is_flag=True, help="Replace an output directory that holds other results.")
@click.option("--no-cache", is_flag=True, help="Recompute calibration statistics even if cached.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@click.pass_context
def compare(ctx, model, model_opt, methods, layers, options, include_models, ppl, context_length, stride, max_ppl_tokens, tasks,
            tasks_dir, task_data, num_fewshot, limit, eval_batch_size, device, dtype, trust_remote_code, plan_file,
            output, overwrite, no_cache, as_json, **calib) -> None:
    """Compare pruning methods on MODEL fairly: the same weights, the same
    calibration pass and the same evaluation for all, plus the unpruned baseline.

    With no MODEL, the embedded demo model is used (trained by replaceme's own
    code and shipped with the package, so it starts at once, offline), with its
    own calibration and held-out text: `replaceme compare` alone shows every
    method at work.

    The table has each metric, the average task score, the % of the baseline
    retained (accuracy ratio; inverse ratio for perplexity), prune and
    evaluation time, peak memory and parameter count. With --output, every
    finished row is saved at once and a re-run skips it, so an interrupted
    comparison resumes.

    \b
    Examples:
      replaceme compare
      replaceme compare ./model -m uidl -m replaceme-lstsq -n 2,4 \\
          --calib 'data.txt[:2000]' --ppl 'data.txt[3000:]' --output runs/cmp
      replaceme compare ./model -n 8 --calib wikitext:wikitext-2-raw-v1 \\
          --tasks boolq,piqa,hellaswag --task-data ./shared/data --limit 500
      replaceme compare ./llama -m replaceme-lstsq -n 8 --calib data.txt --ppl test.txt \
          --include-model slicegpt=./llama-slicegpt-25 --include-model ./llama-llm-pruner
      replaceme compare --plan plan.yaml
    """
    from replaceme.compare.plan import ComparePlan, MethodEntry, parse_layers, read_plan_file
    from replaceme.compare.results import to_frame
    from replaceme.compare.runner import run_comparison
    from replaceme.console import stderr, stdout, table
    from replaceme.errors import ReplacemeError
    from replaceme.evaluation.spec import EvalSpec
    from replaceme.methods import declares_option

    settings = read_plan_file(plan_file) if plan_file else {}

    def pick(name, value):
        source = ctx.get_parameter_source(name)
        given = source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
        return value if given or name not in settings else settings[name]

    from replaceme.demo import DEMO_NAME, is_demo

    device, dtype = pick("device", device), pick("dtype", dtype)
    model = model or model_opt or settings.get("model") or DEMO_NAME
    entries = [MethodEntry(m) for m in methods] or settings.get("methods") or []
    if not entries:
        from replaceme.registry import registry

        entries = [MethodEntry(name) for name in registry().builtin_methods()]
    for key, value in options:
        target, _, opt = key.rpartition(".")
        opt = opt.replace("-", "_")
        if target:
            matched = [e for e in entries if target in (e.label, e.name)]
        else:
            matched = [e for e in entries if declares_option(e.name, opt, selector=e.selector, compensator=e.compensator)]
        if not matched:
            raise ReplacemeError(f"-o {key}: no method in this comparison " + (f"is labelled '{target}'" if target else "has that option"))
        for e in matched:
            e.options[opt] = value
    budgets = parse_layers(layers) if layers else settings.get("layers") or ([2, 4] if is_demo(model) else [1])
    calib_values = {k: pick(k, v) for k, v in calib.items()}
    ppl_sources = list(ppl) or settings.get("ppl") or []
    if is_demo(model):
        from replaceme.demo import demo_data_files, demo_model_dir

        files = demo_data_files(demo_model_dir())
        calib_values["calib"] = calib_values.get("calib") or str(files["calibration"])
        ppl_sources = ppl_sources or [str(files["validation"])]
        if ctx.get_parameter_source("max_length").name == "DEFAULT" and "max_length" not in settings:
            calib_values["max_length"] = 128
    if not calib_values.get("calib"):
        raise ReplacemeError("--calib is required (a text file or a hub dataset)")
    from replaceme.calibration import CalibrationSpec

    spec = CalibrationSpec(calib_values.pop("calib"), column=calib_values.pop("calib_column"), split=calib_values.pop("calib_split"),
                           samples=calib_values.pop("calib_samples"), **calib_values)
    task_list = pick("tasks", tasks)
    task_list = [t.strip() for t in task_list.split(",") if t.strip()] if isinstance(task_list, str) else list(task_list or [])
    lim = pick("limit", limit)
    evaluation = EvalSpec(
        ppl=ppl_sources, context_length=pick("context_length", context_length), stride=pick("stride", stride),
        max_ppl_tokens=pick("max_ppl_tokens", max_ppl_tokens), tasks=task_list, tasks_dir=pick("tasks_dir", tasks_dir),
        task_data=pick("task_data", task_data), num_fewshot=pick("num_fewshot", num_fewshot),
        limit=int(lim) if lim is not None and float(lim) >= 1 else lim, batch_size=pick("eval_batch_size", eval_batch_size),
        ppl_batch_size=pick("eval_batch_size", eval_batch_size), seed=spec.seed, device=device, dtype=dtype,
    )
    from replaceme.compare.external import parse_include

    include = parse_include(list(include_models) or settings.get("include_models") or [])
    plan = ComparePlan(model=model, methods=entries, layers=budgets, calibration=spec, evaluation=evaluation,
                       seed=spec.seed, device=device, dtype=dtype, trust_remote_code=trust_remote_code, include=include)
    out = Path(output) if output else pick("output", None)
    outcome = run_comparison(plan, Path(out) if out else None, overwrite=overwrite, use_cache=not no_cache)
    frame = to_frame(outcome.rows)
    if as_json:
        click.echo(frame.to_json(orient="records", indent=2))
    else:
        stats = outcome.provenance.get("statistics")
        caption = f"shared calibration pass: {stats['tokens']} tokens, {stats['seconds']:.1f} s" if stats else None
        tbl = table(f"{model}: {outcome.provenance['layers_before']} layers", list(frame.columns), frame.astype(object).where(frame.notna(), None).values.tolist())
        tbl.caption = caption
        stdout.print(tbl)
        if out:
            stderr.print(f"results in {out}: " + ", ".join(p.name for p in outcome.written))
    if outcome.failed:
        raise ReplacemeError(f"{len(outcome.failed)} row(s) failed: " + "; ".join(f"{r.label} -{r.layers}: {r.error}" for r in outcome.failed))

