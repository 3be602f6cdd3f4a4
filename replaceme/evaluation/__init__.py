"""Evaluation of an in-memory model: perplexity and lm-eval tasks.

One entry point, shared by ``replaceme evaluate`` and ``replaceme compare``::

    from replaceme.evaluation import EvalSpec, evaluate

    spec = EvalSpec(ppl=["data/valid.txt[3000:]"], tasks=["boolq", "piqa"],
                    task_data="data/", limit=200)
    result = evaluate(model, tokenizer, spec)
    result.metrics   # {"ppl:data/valid.txt[3000:]": 4.6, "boolq": 0.61, "piqa": 0.55}

Importing this package is cheap (no torch, no lm-eval); they load on first use.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from replaceme.evaluation.spec import EvalResult, EvalSpec

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "EvalSpec", "evaluate", "ppl_key"]


def ppl_key(source: str) -> str:
    """The metric name of a perplexity source: ``"ppl:<source>"``."""
    return f"ppl:{source}"


def evaluate(model: Any, tokenizer: Any, spec: EvalSpec, *, offloaded: Any = None) -> EvalResult:
    """Evaluate ``model`` as ``spec`` says: perplexity per source, then lm-eval tasks.

    The model is first moved and cast **in place** to ``spec.device`` /
    ``spec.dtype`` (see :func:`replaceme.evaluation.device.place_model`) and
    put in eval mode; it is otherwise untouched. The tokenizer is not modified.
    Running lm-eval tasks reseeds python's, numpy's and torch's global RNGs
    with ``spec.seed`` (as lm-eval does).

    Args:
        model: a Hugging Face causal LM (any ``*ForCausalLM``).
        tokenizer: its tokenizer.
        spec: what to measure.
        offloaded: with ``--offload``, the :class:`~replaceme.offload.OffloadedModel` whose
            skeleton (or a variant of it) ``model`` is: it runs layer by layer on the
            device and in the dtype it was loaded with (:mod:`replaceme.evaluation.offloaded`).

    Returns:
        An :class:`EvalResult`; ``metrics`` holds ``"ppl:<source>"`` and one
        entry per task (its primary metric).

    Raises:
        ReplacemeError: bad spec, missing data, unknown task, NaN/Inf loss.
    """
    from replaceme.data.texts import TextSource, load_texts
    from replaceme.evaluation.device import place_model
    from replaceme.evaluation.perplexity import perplexity

    spec.validate()
    started = time.perf_counter()
    scorer = None
    if offloaded is not None:
        from replaceme.evaluation.offloaded import offloaded_scorer

        device, dtype, scorer = offloaded.device, offloaded.dtype, offloaded_scorer(offloaded, model)
    else:
        device, dtype = place_model(model, spec.device, spec.dtype)
    log.info("evaluating on %s in %s", device, str(dtype).removeprefix("torch."))
    result = EvalResult(provenance=_provenance(model, spec, device, dtype))

    for source in spec.ppl:
        key = ppl_key(source)
        t0 = time.perf_counter()
        texts = load_texts(TextSource(source, column=spec.ppl_column, split=spec.ppl_split))
        ppl = perplexity(
            model,
            tokenizer,
            texts,
            context_length=spec.context_length,
            stride=spec.stride,
            batch_size=spec.ppl_batch_size,
            max_tokens=spec.max_ppl_tokens,
            description=f"perplexity {source}",
            bootstrap_iters=spec.bootstrap_iters,
            scorer=scorer,
        )
        result.metrics[key] = ppl.ppl
        result.tokens[key] = ppl.tokens
        if ppl.stderr is not None:
            result.stderr[key] = ppl.stderr
        result.details[key] = {"ppl": ppl.ppl, "ppl_stderr": ppl.stderr, "nll": ppl.nll, "tokens": ppl.tokens,
                               "windows": ppl.windows}
        result.seconds[key] = time.perf_counter() - t0

    if spec.tasks:
        from replaceme.evaluation.lm_eval_runner import run_tasks

        t0 = time.perf_counter()
        tasks = run_tasks(
            model,
            tokenizer,
            spec.tasks,
            task_data=spec.task_data,
            tasks_dir=spec.tasks_dir,
            num_fewshot=spec.num_fewshot,
            limit=spec.limit,
            batch_size=spec.batch_size,
            seed=spec.seed,
            bootstrap_iters=spec.bootstrap_iters,
            offloaded=offloaded,
        )
        result.metrics.update(tasks.metrics)
        result.task_metrics.update(tasks.metric_names)
        result.stderr.update(tasks.stderr)
        result.chance.update(tasks.chance)
        result.details.update(tasks.details)
        result.lm_eval = tasks.raw
        result.seconds["lm_eval"] = time.perf_counter() - t0

    result.seconds["total"] = time.perf_counter() - started
    return result


def _provenance(model: Any, spec: EvalSpec, device: Any, dtype: Any) -> dict[str, Any]:
    """Settings, where it ran, the model's size, and library versions."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "transformers", "lm_eval", "datasets"):
        try:
            versions[package] = version(package.replace("_", "-"))
        except PackageNotFoundError:
            versions[package] = None
    from replaceme.evaluation.tasks import DATA_ENV

    config = getattr(model, "config", None)
    return {
        "spec": spec.to_dict(),
        "task_data": (spec.task_data or os.environ.get(DATA_ENV)) if spec.tasks else None,
        "model": getattr(config, "_name_or_path", None) or type(model).__name__,
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "versions": versions,
    }


def check_perplexity_sources(spec: EvalSpec, tokenizer: Any, config: Any) -> None:
    """Every local ``--ppl`` source gives at least one window to score with ``tokenizer`` at
    the spec's context length (capped at the positions ``config`` states): checked before
    the model loads, as :func:`evaluate` will plan them."""
    from replaceme.data.texts import TextSource, load_texts
    from replaceme.evaluation.perplexity import config_positions, plan_corpus

    for source in spec.ppl:
        text_source = TextSource(source, column=spec.ppl_column, split=spec.ppl_split)
        if text_source.is_local:
            plan_corpus(tokenizer, load_texts(text_source), config_positions(config), context_length=spec.context_length,
                        stride=spec.stride, max_tokens=spec.max_ppl_tokens, add_bos=None,
                        description=f"perplexity {source}", warn=False)
