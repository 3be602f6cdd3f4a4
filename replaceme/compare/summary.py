"""Summary metrics of a comparison: retention, chance-corrected retention, perplexity ratio, collapse.

Every number is relative to the unpruned baseline row of the same comparison.

- ``retained %`` — the ReplaceMe paper's summary, kept as the paper reports it:
  the mean over every metric of ``score / baseline`` for accuracies and
  ``baseline / score`` for perplexities, × 100. It is only meaningful far above
  chance: a task at chance level can "improve" by noise (BoolQ flipping from 0.29
  to 0.70 on a collapsed model gives it 240 %).
- ``retained (cc) %`` — chance-corrected retention: the mean over tasks of
  ``(score − chance) / (baseline − chance)`` × 100, where ``chance`` is the
  task's chance level (the mean of ``1 / choices`` over its documents, recorded
  per task by the evaluation; 0 for tasks without choices). A task whose
  baseline is not clearly above chance (by less than :data:`MIN_ABOVE_CHANCE`,
  or less than twice the baseline's standard error) carries no information on
  what pruning kept and is left out. Empty without such tasks.
- ``ppl ratio`` — the geometric mean over perplexity sources of
  ``perplexity / baseline perplexity`` (1 = as good as the baseline; a
  non-finite perplexity gives infinity).
- ``collapsed`` — a row whose ``ppl ratio`` is at least :data:`PPL_COLLAPSE`
  (the mean log-loss per token grew by ln 10 ≈ 2.3 nats or more) or whose
  ``retained (cc) %`` is at most :data:`CC_COLLAPSE` (it kept at most a tenth
  of the baseline's margin over chance). A collapsed row is flagged in the
  table, the JSON and the plots, and is never marked best.
- ``best`` — per layer budget, the row with the highest ``retained (cc) %``
  (or ``retained %`` where a row has no chance-corrected value) among the
  pruned rows that neither failed nor collapsed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replaceme.compare.results import Row

#: a perplexity ratio at least this large (vs the baseline) marks a collapsed model
PPL_COLLAPSE = 10.0
#: a chance-corrected retention at most this large (in %) marks a collapsed model
CC_COLLAPSE = 10.0
#: a task counts in chance-corrected retention only when its baseline is this far above chance
MIN_ABOVE_CHANCE = 0.02
#: label of the unpruned model's row
BASELINE = "baseline"


def lower_is_better(metric: str) -> bool:
    """Perplexities (lower is better) against accuracies."""
    return metric.startswith("ppl") or metric.endswith("perplexity")


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def retained(row: Row, base: Row | None, metrics: list[str]) -> float | None:
    """The paper's ``retained %`` of ``row`` over ``metrics`` (None when a value is missing)."""
    if base is None or row.error:
        return None
    ratios = []
    for m in metrics:
        a, b = row.metrics.get(m), base.metrics.get(m)
        if not _finite(a, b) or a <= 0 or b <= 0:
            return None
        ratios.append(b / a if lower_is_better(m) else a / b)
    return 100.0 * sum(ratios) / len(ratios) if ratios else None


def informative_tasks(base: Row | None, tasks: list[str]) -> list[str]:
    """Tasks whose baseline score is clearly above chance (see the module's definitions)."""
    if base is None:
        return []
    out = []
    for t in tasks:
        score, chance = base.metrics.get(t), base.chance.get(t)
        if not _finite(score, chance):
            continue
        margin = max(MIN_ABOVE_CHANCE, 2 * base.stderr.get(t, 0.0))
        if score - chance > margin:
            out.append(t)
    return out


def chance_corrected(row: Row, base: Row | None, tasks: list[str]) -> float | None:
    """``retained (cc) %`` over ``tasks`` (already filtered by :func:`informative_tasks`)."""
    if base is None or row.error or not tasks:
        return None
    values = []
    for t in tasks:
        score, b, chance = row.metrics.get(t), base.metrics[t], base.chance[t]
        if not _finite(score):
            return None
        values.append((score - chance) / (b - chance))
    return 100.0 * sum(values) / len(values)


def ppl_ratio(row: Row, base: Row | None, metrics: list[str]) -> float | None:
    """Geometric mean of ``perplexity / baseline perplexity`` over the perplexity metrics."""
    names = [m for m in metrics if lower_is_better(m)]
    if base is None or row.error or not names:
        return None
    logs = []
    for m in names:
        a, b = row.metrics.get(m), base.metrics.get(m)
        if a is None or not _finite(b) or b <= 0:
            return None
        if not _finite(a) or a <= 0:
            return math.inf
        logs.append(math.log(a / b))
    return math.exp(sum(logs) / len(logs))


def is_collapsed(ratio: float | None, cc: float | None) -> bool:
    """The collapse rule (see the module's definitions)."""
    return (ratio is not None and not ratio < PPL_COLLAPSE) or (cc is not None and cc <= CC_COLLAPSE)


def mark_best(records: list[dict[str, Any]]) -> None:
    """Set ``best`` on each record: the top pruned, healthy row of its layer budget."""
    for rec in records:
        rec["best"] = False
    budgets = {rec["layers"] for rec in records if rec["layers"]}
    for n in budgets:
        candidates = [r for r in records if r["layers"] == n and r["method"] != BASELINE and not r.get("error")
                      and not r["collapsed"] and ranking_score(r) is not None]
        if candidates:
            max(candidates, key=ranking_score)["best"] = True


def ranking_score(rec: dict[str, Any]) -> float | None:
    """What ranks rows: chance-corrected retention when there is one, else the paper's retention."""
    cc = rec.get("retained (cc) %")
    return cc if cc is not None else rec.get("retained %")
