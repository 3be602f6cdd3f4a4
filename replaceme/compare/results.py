"""Result rows of a comparison, the summary columns, and their exports.

Summary columns (the ReplaceMe paper's Table 1 plus cost):

- ``avg``: mean of the lm-eval task scores (accuracies), when there are tasks;
- ``retained %``: mean over every metric of the score kept relative to the
  baseline row — ``score / baseline`` for accuracies, ``baseline / score`` for
  perplexities (lower is better) — times 100.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: label of the unpruned model's row
BASELINE = "baseline"


@dataclass
class Row:
    """One line of the table: the baseline, or a method at one layer budget."""

    label: str
    method: str
    layers: int
    key: str
    blocks: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    prune_seconds: float | None = None
    eval_seconds: float | None = None
    peak_rss_mb: float | None = None
    peak_cuda_mb: float | None = None
    params: int | None = None
    num_layers: int | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        return cls(**data)


def short_metric(name: str) -> str:
    """``ppl:/long/path/valid.txt[3000:]`` -> ``ppl valid.txt[3000:]`` for table headers."""
    if not name.startswith("ppl:"):
        return name
    return "ppl " + Path(name[4:]).name if "/" in name[4:] else "ppl " + name[4:]


def lower_is_better(metric: str) -> bool:
    return metric.startswith("ppl") or metric.endswith("perplexity")


def summarise(rows: list[Row]) -> list[dict[str, Any]]:
    """Flat records with metrics, ``avg`` and ``retained %`` (vs the baseline row)."""
    base = next((r for r in rows if r.method == BASELINE and not r.error), None)
    metric_names: list[str] = []
    for r in rows:
        for name in r.metrics:
            if name not in metric_names:
                metric_names.append(name)
    tasks = [m for m in metric_names if not lower_is_better(m)]
    records = []
    for r in rows:
        rec: dict[str, Any] = {"method": r.label, "layers": r.layers, "blocks": r.blocks}
        for name in metric_names:
            rec[name] = r.metrics.get(name)
        scores = [r.metrics[t] for t in tasks if t in r.metrics]
        rec["avg"] = sum(scores) / len(scores) if tasks and len(scores) == len(tasks) else None
        rec["retained %"] = _retained(r, base, metric_names)
        rec.update({
            "prune s": r.prune_seconds, "eval s": r.eval_seconds, "peak RSS MB": r.peak_rss_mb,
            "peak CUDA MB": r.peak_cuda_mb, "params": r.params, "error": r.error,
        })
        records.append(rec)
    return records


def _retained(row: Row, base: Row | None, metrics: list[str]) -> float | None:
    if base is None or row.error:
        return None
    ratios = []
    for m in metrics:
        a, b = row.metrics.get(m), base.metrics.get(m)
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or a <= 0 or b <= 0:
            return None
        ratios.append(b / a if lower_is_better(m) else a / b)
    return 100.0 * sum(ratios) / len(ratios) if ratios else None


def to_frame(rows: list[Row]) -> Any:
    """The summary as a pandas DataFrame (drops all-empty cost columns)."""
    import pandas as pd

    frame = pd.DataFrame(summarise(rows))
    frame = frame.rename(columns={c: short_metric(c) for c in frame.columns})
    if "params" in frame:
        frame["params"] = frame["params"].map(lambda v: None if v is None or v != v else f"{v / 1e6:.3f}M")
    for col in ("avg", "peak CUDA MB", "error", "blocks"):
        if col in frame and frame[col].isna().all() | (frame[col] == "").all():
            frame = frame.drop(columns=col)
    return frame


def write_exports(rows: list[Row], out: Path, provenance: dict[str, Any]) -> list[Path]:
    """Write ``results.csv``, ``results.md``, ``results.json`` (atomically) and the plots."""
    from replaceme.outputs import write_json_atomic, write_text_atomic

    frame = to_frame(rows)
    write_text_atomic(out / "results.csv", frame.to_csv(index=False))
    write_text_atomic(out / "results.md", _markdown(frame) + "\n")
    write_json_atomic(out / "results.json", {"rows": [r.to_dict() for r in rows], "summary": summarise(rows),
                                              "provenance": provenance})
    written = [out / "results.csv", out / "results.md", out / "results.json"]
    return written + _plots(frame, out)


def _markdown(frame: Any) -> str:
    """A GitHub Markdown table (no extra dependency)."""
    from replaceme.console import format_cell

    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for rec in frame.to_dict("records"):
        lines.append("| " + " | ".join(format_cell(_clean(rec[c])) for c in cols) + " |")
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _plots(frame: Any, out: Path) -> list[Path]:
    from replaceme.plots import bar_chart, line_chart

    written = []
    pruned = frame[frame["method"] != BASELINE].dropna(subset=["retained %"])
    if len(pruned):
        labels = [f"{m} (-{n})" for m, n in zip(pruned["method"], pruned["layers"])]
        bar_chart(labels, list(pruned["retained %"]), out / "retained.png", "% of baseline retained",
                  "Quality retained per method")
        written.append(out / "retained.png")
    if pruned["layers"].nunique() > 1:
        series = {m: (list(g["layers"]), list(g["retained %"])) for m, g in pruned.groupby("method")}
        line_chart(series, out / "sweep.png", "layers removed", "% of baseline retained", "Quality vs layers removed")
        written.append(out / "sweep.png")
    return written
