"""The comparison's figures: ``retained.png`` (both retentions grouped by budget) and ``sweep.png``.

- ``retained.png``: one group of bars per layer budget, one colour per method;
  a panel for the paper's ``retained %`` and, with tasks whose baseline is
  above chance, one for ``retained (cc) %``; a dashed line at 100 %; collapsed
  rows hatched grey and labelled, the best row of each budget starred (never a
  collapsed one).
- ``sweep.png`` (several budgets): ``retained %`` against layers removed per
  method, integer ticks, legend outside the axes, collapsed points crossed in red.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replaceme.compare.summary import BASELINE

RETAINED = "retained %"
CHANCE_CORRECTED = "retained (cc) %"


def write_figures(records: list[dict[str, Any]], out: Path, note: str | None = None) -> list[Path]:
    """Write the figures of the summary ``records`` into ``out`` (``note``: a line under the
    title of ``retained.png``, e.g. why there is no chance-corrected panel); returns the paths written."""
    from replaceme.plots import grouped_bars, line_chart

    pruned = [r for r in records if r["method"] != BASELINE and r.get(RETAINED) is not None]
    if not pruned:
        return []
    budgets = sorted({r["layers"] for r in pruned})
    methods = list(dict.fromkeys(r["method"] for r in pruned))
    cell = {(r["method"], r["layers"]): r for r in pruned}

    def column(key: str) -> dict[str, list[Any]]:
        return {m: [cell[(m, n)].get(key) if (m, n) in cell else None for n in budgets] for m in methods}

    panels = {"retained % (paper)": column(RETAINED)}
    if any(r.get(CHANCE_CORRECTED) is not None for r in pruned):
        panels["retained % (chance-corrected)"] = column(CHANCE_CORRECTED)
    collapsed = {m: [bool(v) for v in vs] for m, vs in column("collapsed").items()}
    best = {m: [bool(v) for v in vs] for m, vs in column("best").items()}
    written = [out / "retained.png"]
    grouped_bars([f"-{n} layers" for n in budgets], panels[next(iter(panels))], written[0], panels=panels,
                 reference=100.0, marked=collapsed, starred=best,
                 title="Quality retained vs the unpruned model (★ best healthy row per budget)"
                       + (f"\n{note}" if note else ""))
    if len(budgets) > 1:
        series = {m: ([n for n in budgets if (m, n) in cell], [cell[(m, n)][RETAINED] for n in budgets if (m, n) in cell])
                  for m in methods}
        marks = {m: [bool(cell[(m, n)]["collapsed"]) for n in budgets if (m, n) in cell] for m in methods}
        line_chart(series, out / "sweep.png", "layers removed", "% of baseline retained (paper)",
                   "Quality vs layers removed", marked=marks, reference=100.0)
        written.append(out / "sweep.png")
    return written
