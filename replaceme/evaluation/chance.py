"""Chance level of lm-eval tasks: the score of guessing uniformly among each document's choices.

For a ``multiple_choice`` task, the expected accuracy of a uniform guess is the
mean over the evaluated documents of ``1 / number of choices`` (0.5 for BoolQ
and PIQA, 0.25 for HellaSwag and ARC's usual four choices, the exact mean when
documents differ). Length normalisation (``acc_norm``) does not change it.
Generation and log-likelihood tasks (LAMBADA, ...) have no choices to guess
among: their chance level is 0. A group's chance is that of all its documents
pooled, as a size-weighted mean of its tasks.

Recorded per task in the evaluation result, it gives the chance-corrected
retention of :mod:`replaceme.compare.summary`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger(__name__)


def evaluated_docs(task: Any, limit: int | float | None) -> list[Any]:
    """The documents lm-eval evaluates for ``task`` under ``limit`` (the first ones, as lm-eval takes them)."""
    docs = task.eval_docs
    if limit is None:
        return list(docs)
    count = int(math.ceil(len(docs) * limit)) if limit < 1.0 else int(limit)
    return [doc for i, doc in enumerate(docs) if i < count]


def task_chance(task: Any, limit: int | float | None) -> tuple[float, int]:
    """``(chance level, documents)`` of one lm-eval task object."""
    docs = evaluated_docs(task, limit)
    if getattr(task, "OUTPUT_TYPE", None) != "multiple_choice" or not docs:
        return 0.0, len(docs)
    total = 0.0
    for doc in docs:
        choices = task.doc_to_choice(doc)
        total += 1.0 / len(choices) if len(choices) else 0.0
    return total / len(docs), len(docs)


def chance_level(obj: Any, limit: int | float | None) -> float:
    """Chance level of a task, or of a group (its tasks' documents pooled)."""
    leaves = obj.get_all_tasks() if hasattr(obj, "get_all_tasks") else [obj]
    levels = [task_chance(t, limit) for t in leaves]
    docs = sum(n for _, n in levels)
    return sum(c * n for c, n in levels) / docs if docs else 0.0


def objects_by_name(loaded: list[tuple[str, Any]]) -> dict[str, Any]:
    """Every requested task, group and leaf task object of ``(name, object)`` pairs, by name."""
    out: dict[str, Any] = {}
    for name, obj in loaded:
        out[name] = obj
        leaves = obj.get_all_tasks() if hasattr(obj, "get_all_tasks") else [obj]
        out.update({getattr(t, "task_name", None) or name: t for t in leaves})
    return out


def known_chance(obj: Any, limit: int | float | None) -> float | None:
    """The chance level of a task object; None when the object cannot list its choices (unknown)."""
    if obj is None:
        return None
    try:
        return chance_level(obj, limit)
    except Exception as exc:  # a custom task whose choices cannot be listed
        log.debug("no chance level for %s: %s", getattr(obj, "task_name", obj), exc)
        return None
