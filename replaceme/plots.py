"""PNG plots (matplotlib, headless): distance heatmaps and result charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: image formats a plot path may end with
FORMATS = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def _save(plt: Any, fig: Any, path: str | Path, replace: bool = True) -> None:
    """Save through a temporary file and a rename (the format from the path's suffix; PNG if none)."""
    from replaceme.outputs import atomic_file

    suffix = Path(path).suffix.lower()
    fmt = suffix[1:] if suffix in FORMATS else "png"
    try:
        with atomic_file(path, replace=replace, suffix="." + fmt) as tmp:
            fig.savefig(tmp, dpi=120, format=fmt)
    finally:
        plt.close(fig)


def distance_heatmap(frame: Any, path: str | Path, title: str = "Angular distance",
                     extra: dict[str, str] | None = None, replace: bool = True) -> None:
    """Heatmaps (start × block size) of a frame with columns ``start``, ``size``,
    ``distance``; ``extra`` maps more columns to panel titles (e.g. ``{"ppl": ...}``).
    Written through a temporary file; without ``replace`` an existing file is kept."""
    plt = _pyplot()
    panels = {"distance": title, **(extra or {})}
    sizes = frame["size"].nunique()
    starts = frame["start"].nunique()
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(len(panels) * max(4, 0.35 * starts + 2), max(2.5, 0.35 * sizes + 1.5)))
    for ax, (column, label) in zip(axes[0], panels.items()):
        pivot = frame.pivot(index="size", columns="start", values=column)
        im = ax.imshow(pivot.values, aspect="auto", cmap="viridis_r", origin="lower")
        ax.set_xticks(range(pivot.shape[1]), [str(c) for c in pivot.columns])
        ax.set_yticks(range(pivot.shape[0]), [str(i) for i in pivot.index])
        ax.set_xlabel("first layer of the block")
        ax.set_ylabel("block size (layers)")
        ax.set_title(label)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    _save(plt, fig, path, replace)


def bar_chart(labels: list[str], values: list[float], path: str | Path, ylabel: str, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(labels) + 1), 3.5))
    ax.bar(range(len(labels)), values, color="#4477aa")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    _save(plt, fig, path)


def line_chart(series: dict[str, tuple[list[float], list[float]]], path: str | Path, xlabel: str, ylabel: str, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(plt, fig, path)
