"""Run lm-evaluation-harness tasks on an in-memory model.

The model is wrapped as ``HFLM(pretrained=<model object>, tokenizer=...)``; it
is never saved or reloaded. Tasks come from three places:

- the **offline task pack** (:mod:`replaceme.evaluation.tasks`) when a task
  data directory is known (``task_data=`` or ``$REPLACEME_TASK_DATA``): its
  names (``boolq``, ``piqa``, ``hellaswag``, ``arc_easy``, ``arc_challenge``,
  ``openbookqa``, ``winogrande``, ``sciq``, ``lambada_openai``) are then
  evaluated from the local copies;
- a directory of the user's own YAML tasks (``tasks_dir=``);
- lm-eval's registry (datasets from the Hugging Face hub; needs the internet).

A name is looked up in that order (pack, then ``tasks_dir``, then the
registry). Each source gets its own ``TaskManager``, so equal names never
shadow each other inside lm-eval, and lm-eval's full registry (slow to index,
~10 s) is built only when a name is found nowhere else, at most once per process.

**Primary metric.** Each task reports one number: length-normalised accuracy
``acc_norm`` where it is customary (HellaSwag, ARC-Challenge, OpenBookQA, as
the Open LLM Leaderboard and many pruning papers report them), plain ``acc``
for BoolQ, PIQA, Winogrande, ARC-Easy, SciQ and LAMBADA (see
:data:`PRIMARY_METRICS`). Other tasks use the first of
``acc``, ``exact_match``, ``acc_norm``, ... they report. Every metric lm-eval
computed stays available in :attr:`TaskResults.details`.

Seeding: ``seed`` seeds python's ``random``, numpy and torch (globally, as lm-eval
does) and the few-shot sampler of every task. Precision: with a half-precision model,
log-probabilities are computed in float32 (lm-eval's ``softmax_dtype``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError, did_you_mean, first_line
from replaceme.evaluation.bootstrap import DEFAULT_ITERS, lm_eval_bootstrap
from replaceme.evaluation.chance import known_chance, objects_by_name
from replaceme.evaluation.lm_progress import one_bar
from replaceme.evaluation.tasks import DATA_ENV, PACK_DIR, PACK_TASKS, resolve_data_dir

log = logging.getLogger(__name__)

#: task -> the metric reported as its score.
PRIMARY_METRICS: dict[str, str] = {
    "boolq": "acc",
    "piqa": "acc",
    "hellaswag": "acc_norm",
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "openbookqa": "acc_norm",
    "winogrande": "acc",
    "sciq": "acc",
    "lambada_openai": "acc",
    "lambada_standard": "acc",
    "mmlu": "acc",
}
#: Preference order for tasks not in :data:`PRIMARY_METRICS`.
FALLBACK_METRICS = ("acc", "exact_match", "acc_norm", "f1", "mcc", "bleu", "word_perplexity", "perplexity")


@dataclass
class TaskResults:
    """What :func:`run_tasks` returns.

    Attributes:
        metrics: task (or group) name -> value of its primary metric.
        metric_names: task -> name of that metric.
        details: task -> every metric (and stderr) lm-eval reported, plus
            ``samples`` (documents evaluated) and ``num_fewshot``.
        raw: lm-eval's results, JSON-able: ``results``, ``groups``,
            ``configs``, ``versions``, ``n-shot``, ``n-samples``.
        stderr: task -> standard error of its primary metric (when lm-eval gave one).
        chance: task -> chance level of its primary metric
            (:mod:`replaceme.evaluation.chance`; absent when it cannot be known).
    """

    metrics: dict[str, float] = field(default_factory=dict)
    metric_names: dict[str, str] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


def run_tasks(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    task_data: str | None = None,
    tasks_dir: str | None = None,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    seed: int = 1234,
    bootstrap_iters: int = DEFAULT_ITERS,
    max_length: int | None = None,
    offloaded: Any = None,
) -> TaskResults:
    """Evaluate ``model`` on lm-eval ``tasks`` in memory.

    Args:
        model: a ``transformers`` causal LM, already on its device and in eval mode.
        tokenizer: its tokenizer (a copy is given to lm-eval, which would
            otherwise set a pad token on it).
        tasks: task, group or tag names.
        task_data: offline-pack data directory (default ``$REPLACEME_TASK_DATA``).
        tasks_dir: a directory of extra YAML tasks.
        num_fewshot: few-shot examples (``None``: each task's default, 0 here).
        limit: documents per task (int, or fraction < 1); ``None`` = all.
        batch_size: requests per forward pass.
        seed: seed for python/numpy/torch and the few-shot samplers.
        bootstrap_iters: resamples for stderr of non-mean metrics; 0 = no stderr.
        max_length: truncate prompts to this many tokens (default: the model's maximum).
        offloaded: with ``--offload``, the :class:`~replaceme.offload.OffloadedModel`
            whose skeleton (or a variant of it) ``model`` is: log-likelihoods then go
            layer by layer (:mod:`replaceme.evaluation.offloaded_lm`).

    Raises:
        ReplacemeError: unknown task name, missing task data, or a task whose
            dataset cannot be loaded (e.g. a hub task while offline).
    """
    if not tasks:
        raise ReplacemeError("no lm-eval tasks given")
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    loaded = _load_tasks(list(tasks), task_data=task_data, tasks_dir=tasks_dir)
    objects = [obj for _, obj in loaded]
    task_dict = TaskManager(include_defaults=False).load(objects)
    for task in task_dict["tasks"].values():
        _configure(task, num_fewshot, seed)
    lm_class = HFLM
    if offloaded is not None:  # generation tasks: refused before the model loads (check_offload_task_types)
        from replaceme.evaluation.offloaded_lm import OffloadedLM as lm_class

    half = getattr(model, "dtype", None) is not None and str(model.dtype) != "torch.float32"
    with _quiet("lm_eval.models.huggingface"):
        lm = lm_class(
            pretrained=model,
            tokenizer=copy.deepcopy(tokenizer),
            batch_size=batch_size,
            backend="causal",
            max_length=max_length,
            # log-probabilities of a half-precision model in float32: choices
            # often differ by less than bfloat16's resolution
            softmax_dtype="float32" if half else None,
        )
    if offloaded is not None:
        lm.attach(offloaded, model)
    _seed_everything(seed)
    # lm-eval prints (bootstrap notices) on stdout, which carries our results.
    with contextlib.redirect_stdout(sys.stderr), lm_eval_bootstrap(), one_bar(lm, ",".join(tasks)):
        results = evaluate(lm=lm, task_dict=task_dict, limit=limit, bootstrap_iters=bootstrap_iters, log_samples=False)
    return _collect(results, loaded, limit)


# ----------------------------------------------------------------------------- loading


def check_task_names(names: list[str], *, task_data: str | None, tasks_dir: str | None) -> None:
    """Every name is a task, group or tag that lm-eval (or the pack, or ``tasks_dir``)
    knows; checked without loading any dataset, before a model is loaded."""
    managers = _managers(task_data, tasks_dir)
    for name in dict.fromkeys(names):
        if any(name in m.all_tasks for m in managers):
            continue
        registry = _registry(str(tasks_dir) if tasks_dir else None)
        if name not in registry.all_tasks:
            raise _unknown_task(name, registry.all_tasks)


def check_offload_task_types(names: list[str], *, task_data: str | None, tasks_dir: str | None) -> None:
    """``--offload`` scores log-likelihoods: refuse generation tasks before the model loads (reads their data)."""
    from lm_eval.tasks import TaskManager

    from replaceme.evaluation.offloaded_lm import check_offload_tasks

    loaded = _load_tasks(list(names), task_data=task_data, tasks_dir=tasks_dir)
    check_offload_tasks(TaskManager(include_defaults=False).load([obj for _, obj in loaded])["tasks"])


def _managers(task_data: str | None, tasks_dir: str | None) -> list[Any]:
    """The task managers of the offline pack and of ``tasks_dir``, in order of precedence."""
    from lm_eval.tasks import TaskManager

    data_dir = resolve_data_dir(task_data) if (task_data or os.environ.get(DATA_ENV)) else None
    managers = []
    if data_dir is not None:
        metadata = {"task_data": str(data_dir)}
        managers.append(TaskManager(include_path=str(PACK_DIR), include_defaults=False, metadata=metadata))
    if tasks_dir is not None:
        if not Path(tasks_dir).is_dir():
            raise ReplacemeError(f"tasks directory not found: {tasks_dir}")
        managers.append(TaskManager(include_path=str(tasks_dir), include_defaults=False))
    return managers


def _load_tasks(names: list[str], *, task_data: str | None, tasks_dir: str | None) -> list[tuple[str, Any]]:
    """``(name, Task | Group)`` for each requested name (a tag gives several tasks)."""
    data_dir = resolve_data_dir(task_data) if (task_data or os.environ.get(DATA_ENV)) else None
    managers = _managers(task_data, tasks_dir)  # in order of precedence

    out: list[tuple[str, Any]] = []
    seen: set[str] = set()
    registry = None
    for name in dict.fromkeys(names):
        manager = next((m for m in managers if name in m.all_tasks), None)
        if manager is None:
            if registry is None:
                registry = _registry(str(tasks_dir) if tasks_dir else None)
            if name not in registry.all_tasks:
                raise _unknown_task(name, registry.all_tasks)
            manager = registry
        for obj in _build(manager, name, pack_enabled=data_dir is not None):
            leaves = {t.task_name for t in obj.get_all_tasks()} if hasattr(obj, "get_all_tasks") else {obj.task_name}
            if leaves & seen:
                repeated = ", ".join(sorted(leaves & seen))
                raise ReplacemeError(f"task '{name}' repeats tasks already requested: {repeated}")
            seen |= leaves
            out.append((name, obj))
    return out


@functools.lru_cache(maxsize=4)
def _registry(tasks_dir: str | None) -> Any:
    """lm-eval's full task index (plus ``tasks_dir``); built once per process, it takes seconds."""
    from lm_eval.tasks import TaskManager

    log.info("indexing lm-eval's task registry")
    return TaskManager(include_path=tasks_dir)


def _build(manager: Any, name: str, pack_enabled: bool) -> list[Any]:
    """Instantiate one task/group/tag (this loads its dataset)."""
    try:
        with _quiet("lm_eval.api.task"):
            loaded = manager.load([name])
    except ReplacemeError:
        raise
    except Exception as exc:  # datasets/hub/network errors, bad YAML, ...
        first = first_line(exc)
        hint = ""
        if not pack_enabled and name in PACK_TASKS:
            hint = f"; to use local copies pass --task-data DIR (or set {DATA_ENV})"
        raise ReplacemeError(f"cannot load lm-eval task '{name}': {first}{hint}") from exc
    if name in loaded["groups"]:
        return [loaded["groups"][name]]
    return list(loaded["tasks"].values())


def _unknown_task(name: str, choices: Sequence[str]) -> ReplacemeError:
    return ReplacemeError(f"unknown lm-eval task '{name}'{did_you_mean(name, choices)}")


def _configure(task: Any, num_fewshot: int | None, seed: int) -> None:
    """Few-shot count and sampler seed, as ``lm_eval.simple_evaluate`` sets them."""
    if num_fewshot is not None:
        if task.get_config("num_fewshot") == 0 and num_fewshot > 0:
            log.info("%s fixes num_fewshot to 0 in its config", task.config.task)
        else:
            task.set_config(key="num_fewshot", value=num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=seed)


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence one chatty lm-eval logger below ERROR for the duration.

    Used around steps whose warnings are expected here: wrapping an in-memory
    model in ``HFLM`` and loading ``custom_dataset`` tasks.
    """
    logger = logging.getLogger(logger_name)
    before = logger.level
    if logger.getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


# ----------------------------------------------------------------------------- results


def _collect(results: dict[str, Any], loaded: list[tuple[str, Any]], limit: int | float | None = None) -> TaskResults:
    """Primary metrics (with stderr and chance level) for the requested names, details for everything lm-eval reported."""
    per_task = {**results.get("results", {}), **results.get("groups", {})}
    reported: list[str] = []
    for name, obj in loaded:
        if _metrics_of(per_task.get(name, {})):
            reported.append(name)  # a task, or a group with aggregate metrics
        else:  # a tag, or a group without aggregation: its tasks
            leaves = obj.get_all_tasks() if hasattr(obj, "get_all_tasks") else [obj]
            reported.extend(t.task_name for t in leaves)
    objects = objects_by_name(loaded)
    out = TaskResults()
    for name in dict.fromkeys(reported):
        values = _metrics_of(per_task.get(name, {}))
        metric = primary_metric(name, values)
        if metric is None:
            log.warning("task %s reported no numeric metric", name)
            continue
        out.metrics[name] = values[metric]
        out.metric_names[name] = metric
        stderr = _stderrs_of(per_task.get(name, {})).get(f"{metric}_stderr")
        if stderr is not None and math.isfinite(stderr):
            out.stderr[name] = stderr
        chance = known_chance(objects.get(name), limit)
        if chance is not None:
            out.chance[name] = chance
    for name, row in per_task.items():
        detail: dict[str, Any] = {**_metrics_of(row), **_stderrs_of(row)}
        samples = results.get("n-samples", {}).get(name)
        if samples:
            detail["samples"] = samples.get("effective")
        if name in results.get("n-shot", {}):
            detail["num_fewshot"] = results["n-shot"][name]
        out.details[name] = detail
    keep = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "n-samples", "higher_is_better")
    out.raw = jsonable({k: results[k] for k in keep if k in results})
    return out


def _metrics_of(row: dict[str, Any]) -> dict[str, float]:
    """``{"acc": 0.5, ...}`` from lm-eval's ``{"acc,none": 0.5, "acc_stderr,none": ...}``."""
    out = {}
    for key, value in row.items():
        metric, _, filt = key.partition(",")
        if not filt or metric.endswith("_stderr") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[metric if filt == "none" else f"{metric},{filt}"] = float(value)
    return out


def _stderrs_of(row: dict[str, Any]) -> dict[str, float | None]:
    out = {}
    for key, value in row.items():
        metric, _, filt = key.partition(",")
        if filt and metric.endswith("_stderr"):
            name = metric if filt == "none" else f"{metric},{filt}"
            out[name] = float(value) if isinstance(value, (int, float)) else None
    return out


def primary_metric(task: str, metrics: dict[str, float]) -> str | None:
    """The metric reported for ``task`` among those it has (see :data:`PRIMARY_METRICS`)."""
    preferred = PRIMARY_METRICS.get(task)
    if preferred in metrics:
        return preferred
    for name in FALLBACK_METRICS:
        if name in metrics:
            return name
    return next(iter(metrics), None)


def jsonable(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps`` accepts (functions and other objects as strings)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return jsonable(value.item())
    except ImportError:  # pragma: no cover
        pass
    return getattr(value, "__name__", None) or str(value)
