"""``replaceme evaluate``: perplexity and lm-eval tasks for one model."""

from __future__ import annotations

import json
from pathlib import Path

import click

from replaceme.cli.common import (
    SEED,
    LimitType,
    bootstrap_option,
    break_lock_option,
    count,
    format_option,
    load_for_command,
    model_options,
    offload_option,
)


def split_names(values: tuple[str, ...]) -> list[str]:
    """``("a,b", "c")`` -> ``["a", "b", "c"]`` (order kept, duplicates dropped)."""
    names = [n.strip() for v in values for n in v.split(",")]
    return list(dict.fromkeys(n for n in names if n))


def _model_lock(model_or_dir: str, model_card: bool, break_lock: bool):
    """The lock of the model's folder while its card is to be written (else nothing)."""
    import contextlib

    if not model_card:
        return contextlib.nullcontext()
    from replaceme.outputs import output_lock

    return output_lock(model_or_dir, option="--model-card", break_lock=break_lock)


def _command(model_or_dir: str, spec) -> str:
    """The ``replaceme evaluate`` command line that measures ``spec`` again (for model cards)."""
    import shlex

    parts = ["replaceme", "evaluate", model_or_dir]
    for source in spec.ppl:
        parts += ["--ppl", source]
    if spec.ppl:
        parts += ["--context-length", str(spec.context_length)]
        parts += ["--stride", str(spec.stride)] if spec.stride else []
        parts += ["--max-ppl-tokens", str(spec.max_ppl_tokens)] if spec.max_ppl_tokens else []
    if spec.tasks:
        parts += ["--tasks", ",".join(spec.tasks)]
        parts += ["--task-data", str(spec.task_data)] if spec.task_data else []
        parts += ["--num-fewshot", str(spec.num_fewshot)] if spec.num_fewshot is not None else []
        parts += ["--limit", str(spec.limit)] if spec.limit is not None else []
        parts += ["--seed", str(spec.seed)]
    return shlex.join(parts)


@click.command()
@click.argument("model_or_dir")
@click.option("--ppl", "ppl", multiple=True, metavar="SOURCE",
              help="Text to measure perplexity on (repeatable): a .txt/.jsonl/.json/.parquet/.csv file or a hub "
                   "dataset 'name:config', optionally sliced like 'valid.txt[3000:]'.")
@click.option("--ppl-split", default="test", show_default=True, help="Split of hub datasets given to --ppl.")
@click.option("--ppl-column", default="text", show_default=True, help="Text column of structured --ppl sources.")
@click.option("--context-length", type=count(2), default=256, show_default=True,
              help="Tokens per perplexity window (BOS included).")
@click.option("--stride", type=count(), default=None,
              help="Tokens between window starts; smaller = more context per scored token. [default: window]")
@click.option("--ppl-batch-size", type=count(), default=8, show_default=True,
              help="Perplexity windows per forward pass.")
@click.option("--max-ppl-tokens", type=count(), default=None,
              help="Score only the first N tokens of each --ppl source.")
@click.option("--tasks", "tasks", multiple=True, metavar="A,B,...",
              help="lm-eval tasks, comma-separated (repeatable).")
@click.option("--tasks-dir", type=click.Path(file_okay=False), default=None,
              help="Directory of your own lm-eval YAML tasks.")
@click.option("--task-data", type=click.Path(file_okay=False), envvar="REPLACEME_TASK_DATA", default=None,
              help="Local copies for the offline task pack (boolq, piqa, hellaswag, arc_easy, arc_challenge, "
                   "openbookqa, winogrande, sciq, lambada_openai). [env: REPLACEME_TASK_DATA]")
@click.option("--num-fewshot", type=count(0), default=None,
              help="Few-shot examples per prompt. [default: 0]")
@click.option("--limit", type=LimitType(), default=None, help="Documents per task: a count, or a fraction < 1.")
@click.option("--batch-size", type=count(), default=8, show_default=True,
              help="lm-eval requests per forward pass.")
@click.option("--seed", type=SEED, default=1234, show_default=True, help="Seed for lm-eval and few-shot sampling.")
@bootstrap_option
@model_options
@offload_option("perplexity and lm-eval log-likelihoods for all batches, layer by layer")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON instead of a table.")
@format_option
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="With --model-card: also evaluate the unpruned source model (pruning.json's source_model) with "
                   "the same settings, so the card shows what pruning kept.")
@click.option("--model-card", is_flag=True,
              help="Also put the results into the model card (README.md) of DIR, a model pruned by replaceme.")
@break_lock_option
def evaluate(model_or_dir, ppl, ppl_split, ppl_column, context_length, stride, ppl_batch_size, max_ppl_tokens,
             tasks, tasks_dir, task_data, num_fewshot, limit, batch_size, seed, bootstrap_iters, device, dtype,
             trust_remote_code, offload, disk_budget, as_json, fmt, baseline, model_card, break_lock) -> None:
    """Evaluate MODEL_OR_DIR (a model directory or hub id): perplexity and lm-eval tasks.

    Perplexity uses non-overlapping windows of --context-length tokens, each
    starting with BOS (when the tokenizer has one), over the records of a
    source joined by blank lines; --stride makes the windows overlap.

    Tasks run in memory through lm-evaluation-harness, each reported by one
    metric (acc_norm for hellaswag, arc_challenge, openbookqa; acc otherwise;
    --json shows all). Task names come from lm-eval's registry (datasets from
    the hub), from --tasks-dir, or, with --task-data, from the offline pack.

    \b
    Examples:
      replaceme evaluate ./pruned --ppl data/tinystories/valid.txt --max-ppl-tokens 20000
      replaceme evaluate ./pruned --tasks boolq,piqa,hellaswag --task-data data/ --limit 200
      replaceme evaluate ./llama-70b --ppl data/valid.txt --offload
      replaceme evaluate meta-llama/Llama-3.2-1B --ppl wikitext:wikitext-2-raw-v1 \\
          --context-length 2048 --tasks arc_easy,winogrande --json > scores.json
    """
    from replaceme.console import print_rows
    from replaceme.errors import ReplacemeError, shorten
    from replaceme.evaluation import EvalSpec

    spec = EvalSpec(
        ppl=list(ppl), ppl_split=ppl_split, ppl_column=ppl_column, context_length=context_length, stride=stride,
        ppl_batch_size=ppl_batch_size, max_ppl_tokens=max_ppl_tokens, tasks=split_names(tasks), tasks_dir=tasks_dir,
        task_data=task_data, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, seed=seed,
        bootstrap_iters=bootstrap_iters, device=device, dtype=dtype,
    )
    if spec.is_empty:
        raise ReplacemeError("nothing to evaluate: give --ppl SOURCE and/or --tasks NAMES (see --help)")
    if model_card:
        from replaceme.model_card import CARD_FILE
        from replaceme.outputs import check_owned_file

        check_owned_file(model_or_dir, CARD_FILE, kind="pruned-model", option="--model-card")

    from replaceme.checks import check_evaluation_inputs, check_model_inputs

    check_model_inputs(model_or_dir, device)
    check_evaluation_inputs(spec)
    from replaceme.preflight import Intent, preflight
    from replaceme.settings import LoadSettings, MemorySettings

    preflight(Intent(model_or_dir, loading=LoadSettings(device=device, dtype=dtype, trust_remote_code=trust_remote_code),
                     memory=MemorySettings(offload=offload), tasks=list(spec.tasks), task_data=spec.task_data,
                     tasks_dir=spec.tasks_dir, evaluation=spec))
    # the card is written into the model's folder: hold its lock from loading to writing, so that
    # a prune --overwrite of that folder cannot swap the model between the two
    with _model_lock(model_or_dir, model_card, break_lock):
        from replaceme.model_files import folder_fingerprint

        evaluated = folder_fingerprint(model_or_dir) if model_card else None
        result = _load_and_evaluate(model_or_dir, spec, device, dtype, trust_remote_code, offload, disk_budget)
        if model_card:
            from replaceme import model_card as card
            from replaceme.outputs import record_written

            base = _baseline(model_or_dir, spec, device, dtype, trust_remote_code, offload) if baseline else None
            check_owned_file(model_or_dir, CARD_FILE, kind="pruned-model", option="--model-card")
            if folder_fingerprint(model_or_dir) != evaluated:  # e.g. replaced by a run that broke the lock
                raise ReplacemeError(f"--model-card: the model in {shorten(model_or_dir)} changed while it was being "
                                     "evaluated (its pruning.json or weights differ); its card was not updated")
            folder = Path(model_or_dir).expanduser()
            card.add_results(folder, {"metrics": result.metrics, "stderr": result.stderr, "chance": result.chance,
                                      "task_metrics": result.task_metrics, "baseline": base,
                                      "command": _command(model_or_dir, spec)})
            record_written(folder, folder / CARD_FILE)

    if as_json:
        click.echo(json.dumps({"model": model_or_dir, **result.to_dict()}, indent=2))
        return
    rows = []
    for name, metric, value in result.rows():
        source = name.removeprefix("ppl:")
        count = result.tokens.get(name) if name.startswith("ppl:") else result.details.get(name, {}).get("samples")
        rows.append([source, metric, value, result.stderr.get(name), count])
    where = f"{result.provenance['device']}, {result.provenance['dtype']}, {result.seconds['total']:.1f} s"
    print_rows(f"{model_or_dir} ({where})", ["benchmark", "metric", "value", "stderr", "tokens/docs"], rows, fmt=fmt)


def _load_and_evaluate(path: str, spec, device: str, dtype: str, trust_remote_code: bool, offload: bool,
                       disk_budget: str | None = None):
    """Load ``path`` (layer by layer with ``offload``) and evaluate it under ``spec``; the model is freed after."""
    from replaceme.evaluation import evaluate as run_evaluation

    model, tokenizer, offloaded = load_for_command(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                                                   offload=offload, disk_budget=disk_budget)
    return run_evaluation(model, tokenizer, spec, offloaded=offloaded)


def _baseline(directory: str, spec, device: str, dtype: str, trust_remote_code: bool, offload: bool) -> dict | None:
    """The unpruned source model's metrics under ``spec``, or None (with a warning) when it cannot be loaded."""
    import logging

    from replaceme.checks import check_model_inputs
    from replaceme.errors import ReplacemeError

    log = logging.getLogger("replaceme.cli.evaluate")
    try:
        source = json.loads((Path(directory) / "pruning.json").read_text(encoding="utf-8")).get("source_model")
    except (OSError, ValueError):
        source = None
    if not source:
        log.warning("no source model recorded in %s/pruning.json: the card shows no unpruned values", directory)
        return None
    try:
        check_model_inputs(source, device)
    except ReplacemeError as exc:
        log.warning("the unpruned model cannot be evaluated (%s): the card shows no unpruned values", exc)
        return None
    log.info("evaluating the unpruned model %s with the same settings", source)
    return dict(_load_and_evaluate(source, spec, device, dtype, trust_remote_code, offload).metrics)
