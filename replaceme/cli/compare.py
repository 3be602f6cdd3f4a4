"""``replaceme compare``: several methods, same model, same data, same evaluation, one table."""

from __future__ import annotations

from pathlib import Path

import click

from replaceme.cli.common import (
    LimitType,
    bootstrap_option,
    break_lock_option,
    calibration_options,
    count,
    format_option,
    heal_options,
    merge_file_settings,
    model_options,
    offload_option,
    statistics_options,
)


@click.command()
@click.argument("model", required=False)
@click.option("--model", "model_opt", help="Same as the MODEL argument ('demo' = the embedded demo model).")
@click.option("--method", "-m", "methods", multiple=True,
              help="Method to compare (repeatable; default: every built-in method that can run on MODEL). "
                   "To run one method twice with different options, use --plan.")
@click.option("--layers", "-n", "layers", help="Layer budget(s), comma-separated: --layers 1,2  [default: 1; demo: 2,4]")
@click.option("-o", "--option", "options", type=(str, str), multiple=True, metavar="KEY VALUE",
              help="Method option for every method that has it; METHOD.KEY targets one method.")
@click.option("--include-model", "include_models", multiple=True, metavar="[LABEL=]DIR",
              help="Also evaluate a model pruned elsewhere (LLM-Pruner, SliceGPT, an earlier replaceme output) "
                   "as a row of the table (repeatable). It must share MODEL's tokenizer.")
@calibration_options
@heal_options(multiple=True)
@click.option("--ppl", multiple=True, metavar="SOURCE", help="Perplexity text (repeatable): a file or hub dataset, with an optional [start:end] slice.")
@click.option("--context-length", type=count(2), default=256, show_default=True, help="Perplexity window in tokens.")
@click.option("--stride", type=count(), help="Perplexity stride (default: non-overlapping windows).")
@click.option("--max-ppl-tokens", type=count(), help="Score at most this many tokens per perplexity source.")
@click.option("--tasks", help="lm-eval tasks, comma-separated (e.g. boolq,piqa,hellaswag,arc_easy,winogrande).")
@click.option("--tasks-dir", type=click.Path(file_okay=False), help="Directory of extra lm-eval YAML tasks.")
@click.option("--task-data", type=click.Path(file_okay=False), help="Data directory of the offline task pack ($REPLACEME_TASK_DATA).")
@click.option("--num-fewshot", type=count(0), help="Few-shot examples (default: each task's own).")
@click.option("--limit", type=LimitType(), help="Documents per task (an integer, or a fraction < 1).")
@click.option("--eval-batch-size", type=count(), default=8, show_default=True,
              help="lm-eval requests, and perplexity windows, per forward pass.")
@bootstrap_option
@model_options
@offload_option("the calibration pass, plan scoring and every row's evaluation; each method's variant holds only "
                "the layers its merge changed")
@statistics_options
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False), help="YAML with the same settings; flags override it.")
@click.option("--output", type=click.Path(file_okay=False), help="Directory for results (csv, md, json, png); re-running resumes.")
@click.option("--overwrite", is_flag=True, help="Replace an output directory that holds other results.")
@break_lock_option
@click.option("--no-cache", is_flag=True, help="Recompute calibration statistics even if cached.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@format_option
@click.pass_context
def compare(ctx, model, model_opt, methods, layers, options, include_models, ppl, context_length, stride, max_ppl_tokens, tasks,
            tasks_dir, task_data, num_fewshot, limit, eval_batch_size, bootstrap_iters, device, dtype, trust_remote_code,
            offload, disk_budget, memory_budget, stats_passes, spill_dir, gram_device, plan_file, output, overwrite,
            break_lock, no_cache, as_json, fmt, heal, heal_data, heal_column, heal_split, heal_samples, **calib) -> None:
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
      replaceme compare ./model -m uidl -m replaceme-lstsq -n 1,2 --calib 'data.txt[:2000]' \
          --heal lora --heal-data 'data.txt[:3000]' --ppl 'data.txt[3000:]'
      replaceme compare --plan plan.yaml

    --heal NAME adds, for every method, a row healed with that healer
    (uidl+lora) beside the training-free one, with the healing time as a
    column; healer options are given as -o heal.KEY VALUE.
    """
    from replaceme.checks import check_layer_budget
    from replaceme.compare.plan import read_plan_file
    from replaceme.compare.runner import run_comparison

    settings = read_plan_file(plan_file) if plan_file else {}
    values = merge_file_settings(ctx, settings, dict(
        context_length=context_length, stride=stride, max_ppl_tokens=max_ppl_tokens, tasks=tasks, tasks_dir=tasks_dir,
        task_data=task_data, num_fewshot=num_fewshot, limit=limit, eval_batch_size=eval_batch_size,
        bootstrap_iters=bootstrap_iters, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
        overwrite=overwrite, offload=offload, disk_budget=disk_budget, memory_budget=memory_budget,
        stats_passes=stats_passes, spill_dir=spill_dir, gram_device=gram_device, **calib))
    model = model or model_opt or settings.get("model") or _demo_name()
    entries = _method_entries(methods, settings, options, list(heal) or settings.get("heal") or [])
    budgets = _budgets(layers, settings, model)
    for budget in budgets:
        check_layer_budget(budget, model)
    spec = _calibration(ctx, model, {k: values[k] for k in calib}, settings)
    ppl_sources = list(ppl) or settings.get("ppl") or _demo_ppl(model)
    include = list(include_models) or settings.get("include_models") or []
    plan = _compare_plan(model, entries, budgets, spec, ppl_sources, include, values)
    source = heal_data or settings.get("heal_data")
    if source:
        plan.heal_data = {"source": source, "column": settings.get("heal_column", heal_column),
                          "split": settings.get("heal_split", heal_split),
                          "samples": heal_samples or settings.get("heal_samples")}
    out = output or settings.get("output")
    from replaceme.outputs.lock import breaking_locks

    with breaking_locks(break_lock):
        outcome = run_comparison(plan, Path(out).expanduser() if out else None, overwrite=bool(values["overwrite"]),
                                 use_cache=not no_cache, drop_refused=not (methods or settings.get("methods")))
    if outcome is None:  # a torchrun rank other than 0: rank 0 writes and reports
        return
    _report(outcome, model, out, as_json, fmt)


def _demo_name() -> str:
    from replaceme.demo import DEMO_NAME

    return DEMO_NAME


def _method_entries(methods: tuple[str, ...], settings: dict, options: tuple[tuple[str, str], ...],
                    healers: list[str]) -> list:
    """``-m`` flags (or the plan file's methods, or every built-in), a healed copy of each per
    ``--heal``, with ``-o`` routed: ``heal.KEY`` to every healed row, ``METHOD.KEY`` to that
    method, a bare ``KEY`` to every method that declares it."""
    from replaceme.compare.plan import MethodEntry, with_healers
    from replaceme.errors import ReplacemeError
    from replaceme.methods import declares_option

    entries = [MethodEntry(m) for m in methods] or settings.get("methods") or []
    if not entries:
        from replaceme.registry import registry

        entries = [MethodEntry(name) for name in registry().builtin_methods()]
    entries = with_healers(entries, healers)
    for key, value in options:
        if key.startswith("heal."):
            healed = [e for e in entries if e.heal]
            if not healed:
                raise ReplacemeError(f"-o {key}: no row of this comparison is healed (--heal NAME)")
            for e in healed:
                e.options[key] = value
            continue
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
    return entries


def _budgets(layers: str | None, settings: dict, model: str) -> list[int]:
    from replaceme.compare.plan import parse_layers
    from replaceme.demo import is_demo

    return parse_layers(layers) if layers else settings.get("layers") or ([2, 4] if is_demo(model) else [1])


def _calibration(ctx, model: str, calib: dict, settings: dict):
    """The calibration spec from the merged calibration flags; the demo brings its own data and a shorter length."""
    from replaceme.cli.common import calibration_spec, given
    from replaceme.demo import is_demo

    if is_demo(model):
        from replaceme.demo import demo_data_files, demo_model_dir

        calib["calib"] = calib["calib"] or str(demo_data_files(demo_model_dir())["calibration"])
        if not given(ctx, "max_length") and "max_length" not in settings:
            calib["max_length"] = 128
    return calibration_spec(**calib)


def _demo_ppl(model: str) -> list[str]:
    from replaceme.demo import is_demo

    if not is_demo(model):
        return []
    from replaceme.demo import demo_data_files, demo_model_dir

    return [str(demo_data_files(demo_model_dir())["validation"])]


def _compare_plan(model: str, entries: list, budgets: list[int], spec, ppl_sources: list[str], include: list[str],
                  values: dict):
    from replaceme.cli.common import parse_limit
    from replaceme.compare.external import parse_include
    from replaceme.compare.plan import ComparePlan
    from replaceme.evaluation.spec import EvalSpec
    from replaceme.offload.budget import parse_size

    tasks = values["tasks"]
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if isinstance(tasks, str) else list(tasks or [])
    evaluation = EvalSpec(
        ppl=ppl_sources, context_length=values["context_length"], stride=values["stride"],
        max_ppl_tokens=values["max_ppl_tokens"], tasks=task_list, tasks_dir=values["tasks_dir"],
        task_data=values["task_data"], num_fewshot=values["num_fewshot"], limit=parse_limit(values["limit"]),
        batch_size=values["eval_batch_size"], ppl_batch_size=values["eval_batch_size"], seed=spec.seed,
        bootstrap_iters=values["bootstrap_iters"],
        device=values["device"], dtype=values["dtype"],
    )
    return ComparePlan(model=model, methods=entries, layers=budgets, calibration=spec, evaluation=evaluation,
                       seed=spec.seed, device=values["device"], dtype=values["dtype"],
                       trust_remote_code=bool(values["trust_remote_code"]), include=parse_include(include),
                       offload=bool(values["offload"]), disk_budget=parse_size(values["disk_budget"]),
                       memory_budget=parse_size(values["memory_budget"], "--memory-budget"),
                       spill_dir=values["spill_dir"], gram_device=values["gram_device"],
                       stats_passes=str(values["stats_passes"]))


def _report(outcome, model: str, out, as_json: bool, fmt: str = "table") -> None:
    """Print the table (or JSON); a failed row makes the command fail after everything is written."""
    from replaceme.compare.results import frame_cells, to_frame
    from replaceme.console import print_rows, stderr
    from replaceme.errors import ReplacemeError

    frame = to_frame(outcome.rows)
    if as_json:
        click.echo(frame.to_json(orient="records", indent=2))
    else:
        stats = outcome.provenance.get("statistics")
        caption = f"shared calibration pass: {stats['tokens']} tokens, {stats['seconds']:.1f} s" if stats else None
        print_rows(f"{model}: {outcome.provenance['layers_before']} layers", *frame_cells(frame), fmt=fmt, caption=caption)
        if out:
            stderr.print(f"results in {out}: " + ", ".join(p.name for p in outcome.written))
    if outcome.failed:
        raise ReplacemeError(f"{len(outcome.failed)} row(s) failed: " + "; ".join(f"{r.label} -{r.layers}: {r.error}" for r in outcome.failed))
