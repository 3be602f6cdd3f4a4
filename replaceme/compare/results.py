"""Result rows of a comparison, the summary columns, and their exports.

Summary columns (the ReplaceMe paper's Table 1 plus honest health checks and cost):

- ``avg``: mean of the lm-eval task scores (accuracies), when there are tasks;
- ``retained %`` (the paper's), ``retained (cc) %`` (chance-corrected), ``ppl
  ratio`` and the ``flag`` (``collapsed`` / ``best``): defined in
  :mod:`replaceme.compare.summary`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from replaceme.compare.summary import (
    BASELINE,
    chance_corrected,
    informative_tasks,
    is_collapsed,
    lower_is_better,
    mark_best,
    ppl_ratio,
    retained,
)

__all__ = ["BASELINE", "Row", "lower_is_better", "summarise", "to_frame", "write_exports"]


@dataclass
class Row:
    """One line of the table: the baseline, or a method at one layer budget."""

    label: str
    method: str
    layers: int
    key: str
    blocks: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    prune_seconds: float | None = None
    heal_seconds: float | None = None
    eval_seconds: float | None = None
    peak_rss_mb: float | None = None
    peak_cuda_mb: float | None = None
    params: int | None = None
    num_layers: int | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self, result: Any) -> None:
        """Take the metrics, standard errors and chance levels of an :class:`~replaceme.evaluation.EvalResult`."""
        self.metrics = dict(result.metrics)
        self.stderr = dict(result.stderr)
        self.chance = dict(result.chance)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        return cls(**data)


def short_metric(name: str) -> str:
    """``ppl:/long/path/valid.txt[3000:]`` -> ``ppl valid.txt[3000:]`` for table headers."""
    if not name.startswith("ppl:"):
        return name
    return "ppl " + Path(name[4:]).name if "/" in name[4:] else "ppl " + name[4:]


def summarise(rows: list[Row]) -> list[dict[str, Any]]:
    """Flat records with metrics, ``avg``, both retentions, ``ppl ratio``, ``collapsed`` and ``best``."""
    base = next((r for r in rows if r.method == BASELINE and not r.error), None)
    metric_names: list[str] = []
    for r in rows:
        for name in r.metrics:
            if name not in metric_names:
                metric_names.append(name)
    tasks = [m for m in metric_names if not lower_is_better(m)]
    informative = informative_tasks(base, tasks)
    records = []
    for r in rows:
        rec: dict[str, Any] = {"method": r.label, "layers": r.layers, "blocks": r.blocks}
        for name in metric_names:
            rec[name] = r.metrics.get(name)
        scores = [r.metrics[t] for t in tasks if t in r.metrics]
        rec["avg"] = sum(scores) / len(scores) if tasks and len(scores) == len(tasks) else None
        rec["retained %"] = retained(r, base, metric_names)
        rec["retained (cc) %"] = chance_corrected(r, base, informative)
        rec["ppl ratio"] = ppl_ratio(r, base, metric_names)
        rec["collapsed"] = is_collapsed(rec["ppl ratio"], rec["retained (cc) %"])
        rec.update({
            "prune s": r.prune_seconds, "heal s": r.heal_seconds, "eval s": r.eval_seconds, "peak RSS MB": r.peak_rss_mb,
            "peak CUDA MB": r.peak_cuda_mb, "params": r.params, "error": r.error,
        })
        records.append(rec)
    mark_best(records)
    return records


def definitions(rows: list[Row]) -> dict[str, Any]:
    """What the summary columns were computed with: the collapse thresholds and the tasks
    that entered chance-corrected retention (those whose baseline is clearly above chance)."""
    from replaceme.compare import summary

    base = next((r for r in rows if r.method == BASELINE and not r.error), None)
    tasks = list(dict.fromkeys(m for r in rows for m in r.metrics if not lower_is_better(m)))
    return {"ppl_collapse_ratio": summary.PPL_COLLAPSE, "cc_collapse_percent": summary.CC_COLLAPSE,
            "min_above_chance": summary.MIN_ABOVE_CHANCE, "chance": dict(base.chance) if base else {},
            "chance_corrected_tasks": informative_tasks(base, tasks)}


def flag(rec: dict[str, Any]) -> str:
    """The table's ``flag`` cell of a summary record."""
    return "collapsed" if rec["collapsed"] else "best" if rec["best"] else ""


#: summary columns left out of the table when every row leaves them empty
_OPTIONAL = ("avg", "retained (cc) %", "ppl ratio", "flag", "peak CUDA MB", "error", "blocks", "heal s")


def to_frame(rows: list[Row]) -> Any:
    """The summary as a pandas DataFrame: ``collapsed``/``best`` as one ``flag`` column
    after ``layers`` (so that it shows beside the label); all-empty optional columns dropped."""
    import pandas as pd

    records = summarise(rows)
    for rec in records:
        rec["flag"] = flag(rec)
        del rec["collapsed"], rec["best"]
    frame = pd.DataFrame(records)
    if "flag" in frame:
        frame.insert(list(frame.columns).index("layers") + 1, "flag", frame.pop("flag"))
    frame = frame.rename(columns={c: short_metric(c) for c in frame.columns})
    if "params" in frame:
        frame["params"] = frame["params"].map(lambda v: None if v is None or v != v else f"{v / 1e6:.3f}M")
    for col in _OPTIONAL:
        if col in frame and frame[col].isna().all() | (frame[col] == "").all():
            frame = frame.drop(columns=col)
    return frame


def frame_cells(frame: Any) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)`` of a summary frame, missing values as None."""
    return list(frame.columns), frame.astype(object).where(frame.notna(), None).values.tolist()


def write_exports(rows: list[Row], out: Path, provenance: dict[str, Any]) -> list[Path]:
    """Write ``results.csv``, ``results.md``, ``results.json`` (atomically) and the plots."""
    from replaceme.compare.figures import write_figures
    from replaceme.formats import to_csv, to_markdown
    from replaceme.outputs import write_json_atomic, write_text_atomic

    columns, cells = frame_cells(to_frame(rows))
    write_text_atomic(out / "results.csv", to_csv(columns, cells))
    write_text_atomic(out / "results.md", to_markdown(columns, cells))
    defs = definitions(rows)
    write_json_atomic(out / "results.json", {"rows": [_finite(r.to_dict()) for r in rows],
                                              "summary": _finite(summarise(rows)), "definitions": defs,
                                              "provenance": provenance})
    written = [out / "results.csv", out / "results.md", out / "results.json"]
    note = ("no task's baseline is above chance: chance-corrected retention is undefined"
            if defs["chance"] and not defs["chance_corrected_tasks"] else None)
    return written + write_figures(summarise(rows), out, note=note)


def _finite(value: Any) -> Any:
    """A copy with infinite and NaN numbers as the strings ``"inf"``, ``"-inf"``, ``"nan"`` (strict JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
