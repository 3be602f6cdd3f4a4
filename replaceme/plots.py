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


#: the best-column of a distance frame marked on each heatmap panel (others: ``best``)
MARKS = {"ppl": "best_loss", "loss": "best_loss", "kl": "best_loss"}


def distance_heatmap(frame: Any, path: str | Path, title: str = "Angular distance",
                     extra: dict[str, str] | None = None, replace: bool = True) -> None:
    """Heatmaps (start × block size) of a frame with columns ``start``, ``size``,
    ``distance``; ``extra`` maps more columns to panel titles (e.g. ``{"ppl": ...}``).

    Every cell shows its value; the block chosen for each size (the frame's
    ``best`` column, ``best_loss`` for loss panels, when present) is outlined in
    red. Written through a temporary file; without ``replace`` an existing file is kept."""
    plt = _pyplot()
    panels = {"distance": title, **(extra or {})}
    sizes = frame["size"].nunique()
    starts = frame["start"].nunique()
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(len(panels) * max(4.5, 0.55 * starts + 2), max(2.8, 0.45 * sizes + 1.6)))
    for ax, (column, label) in zip(axes[0], panels.items()):
        pivot = frame.pivot(index="size", columns="start", values=column)
        im = ax.imshow(pivot.values, aspect="auto", cmap="viridis_r", origin="lower")
        _annotate(ax, im, pivot.values)
        mark = MARKS.get(column, "best")
        if mark in frame:
            for row in frame[frame[mark].astype(bool)].itertuples():
                x, y = list(pivot.columns).index(row.start), list(pivot.index).index(row.size)
                ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set_xticks(range(pivot.shape[1]), [str(c) for c in pivot.columns])
        ax.set_yticks(range(pivot.shape[0]), [str(i) for i in pivot.index])
        ax.set_xlabel("first layer of the block")
        ax.set_ylabel("block size (layers)")
        ax.set_title(label + ("\n(red: chosen block per size)" if mark in frame else ""), fontsize="medium")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    _save(plt, fig, path, replace)


def _annotate(ax: Any, im: Any, values: Any) -> None:
    """Write each finite cell's value on the heatmap, dark on light cells and light on dark ones."""
    import numpy as np

    finite = np.isfinite(values)
    if not finite.any():
        return
    small = values.shape[1] > 12
    for (y, x), value in np.ndenumerate(values):
        if not finite[y, x]:
            continue
        r, g, b, _ = im.cmap(im.norm(value))
        color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
        ax.text(x, y, f"{value:.3g}", ha="center", va="center", color=color, fontsize=6 if small else 8)


def grouped_bars(groups: list[str], series: dict[str, list[float | None]], path: str | Path, *,
                 panels: dict[str, dict[str, list[float | None]]] | None = None, reference: float | None = None,
                 marked: dict[str, list[bool]] | None = None, starred: dict[str, list[bool]] | None = None,
                 title: str = "", ylabel: str = "") -> None:
    """Bars grouped on the x axis (``groups``), one colour per series, one panel per entry of
    ``panels`` (ylabel -> series; default one panel of ``series``). ``reference`` draws a
    dashed horizontal line (e.g. 100 %); ``marked`` bars are hatched grey and labelled
    "collapsed"; ``starred`` bars get a star above them."""
    plt = _pyplot()
    panels = panels or {ylabel: series}
    names = list(next(iter(panels.values())))
    colors = {n: plt.get_cmap("tab10" if len(names) <= 10 else "tab20")(i % 20) for i, n in enumerate(names)}
    width = 0.8 / max(1, len(names))
    fig, axes = plt.subplots(len(panels), 1, squeeze=False, sharex=True,
                             figsize=(max(7.5, 4.0 + 0.45 * len(names) * len(groups)), 1.2 + 2.8 * len(panels)))
    for ax, (label, data) in zip(axes[:, 0], panels.items()):
        for i, name in enumerate(names):
            xs = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
            for x, value, bad, star in zip(xs, data.get(name, []), (marked or {}).get(name, [False] * len(groups)),
                                           (starred or {}).get(name, [False] * len(groups))):
                if value is None:
                    continue
                ax.bar(x, value, width * 0.95, color="#bbbbbb" if bad else colors[name], hatch="///" if bad else None,
                       edgecolor=colors[name], linewidth=1.5 if bad else 0.8)
                if bad:
                    ax.annotate("collapsed", (x, value), rotation=90, ha="center", va="bottom", fontsize=7)
                if star:
                    ax.annotate("★", (x, value), ha="center", va="bottom", fontsize=12, color="black")
        if reference is not None:
            ax.axhline(reference, color="black", linestyle="--", linewidth=1)
        ax.set_ylabel(label)
        ax.margins(y=0.2)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[n]) for n in names]
    extra = [plt.Rectangle((0, 0), 1, 1, facecolor="#bbbbbb", hatch="///", edgecolor="#555555")] if marked else []
    axes[0, 0].legend(handles + extra, names + (["collapsed"] if marked else []), loc="upper left",
                      bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    axes[-1, 0].set_xticks(range(len(groups)), groups)
    fig.suptitle(title)
    fig.tight_layout()
    _save(plt, fig, path)


def line_chart(series: dict[str, tuple[list[float], list[float]]], path: str | Path, xlabel: str, ylabel: str,
               title: str, *, marked: dict[str, list[bool]] | None = None, reference: float | None = None) -> None:
    """Lines over integer x values (ticks at integers only), legend outside the axes;
    ``marked`` points are drawn as red crosses (e.g. collapsed rows)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for label, (xs, ys) in series.items():
        line, = ax.plot(xs, ys, marker="o", label=label)
        bad = [(x, y) for x, y, m in zip(xs, ys, (marked or {}).get(label, [])) if m]
        if bad:
            ax.scatter(*zip(*bad), marker="x", s=80, color="red", zorder=3)
    if marked and any(any(v) for v in marked.values()):
        ax.scatter([], [], marker="x", s=80, color="red", label="collapsed")
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    _save(plt, fig, path)
