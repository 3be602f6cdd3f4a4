"""All terminal output: logging setup, progress bars, and rich tables.

Everything the tool shows a person goes through here, on stderr except the
results themselves (tables and JSON), which go to stdout.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from replaceme.formats import format_cell

T = TypeVar("T")
__all__ = ["LossBar", "fit_tables", "format_cell", "print_rows", "setup_logging", "table", "track"]

#: results go to stdout; when it is not a terminal (a file, a pipe) tables keep their full width
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True)


def setup_logging(verbose: int = 0) -> None:
    """Route the ``replaceme`` logger (and warnings) to stderr through rich."""
    if verbose < 2:  # our own bars replace the per-file bars of transformers and the hub
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logger = logging.getLogger("replaceme")
    logger.handlers = [RichHandler(console=stderr, show_path=False, show_time=False, markup=False)]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    logging.captureWarnings(True)
    # transformers and datasets are chatty; keep their warnings, drop their info.
    for name in ("transformers", "datasets", "lm_eval"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose < 2 else logging.INFO)


def progress_enabled() -> bool:
    """Progress bars are off when ``REPLACEME_NO_PROGRESS`` is set."""
    return not os.environ.get("REPLACEME_NO_PROGRESS")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over ``items`` with a rich progress bar on stderr."""
    if not progress_enabled():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=stderr,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total, info="")
        for item in items:
            yield item
            progress.advance(task)


class LossBar:
    """A progress bar that also shows a running loss (for training loops)."""

    def __init__(self, description: str, total: int):
        self._progress = None
        if progress_enabled():
            self._progress = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=stderr,
            )
            self._task = self._progress.add_task(description, total=total, info="")

    def __enter__(self) -> LossBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def update(self, advance: int = 1, **info: float) -> None:
        if self._progress is not None:
            text = "  ".join(f"{k} {v:.4g}" for k, v in info.items())
            self._progress.update(self._task, advance=advance, info=text)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()


def _min_width(header: str, cells: list[str], numeric: bool) -> int:
    """Narrowest a column may get: whole numbers, whole labels (up to 48), whole header words."""
    word = max((len(w) for w in header.split()), default=1)
    if numeric:
        return max([word, *(len(c) for c in cells)])
    return max([word, *(min(len(c), 48) for c in cells)])


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
          widths: Sequence[int] | None = None) -> Table:
    """Build a rich table; numbers are right-aligned and formatted compactly. ``widths``
    fixes each column's width (headers and labels wrap inside it, see :func:`fit_tables`);
    without it no column gets narrower than its whole labels and numbers."""
    tbl = Table(title=title, header_style="bold")
    rows = [list(r) for r in rows]
    cells = [[format_cell(v) for v in r] for r in rows]
    for i, col in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
        if widths:
            tbl.add_column(col, justify="right" if numeric else "left", width=widths[i], overflow="fold")
        else:
            tbl.add_column(col, justify="right" if numeric else "left",
                           min_width=_min_width(str(col), [c[i] for c in cells], numeric), overflow="fold")
    for r in cells:
        tbl.add_row(*r)
    return tbl


def fit_tables(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], width: int,
               keep: int = 2) -> list[Table]:
    """One table, or several narrower ones when all columns at their minimum widths exceed ``width``.

    A column's minimum keeps its numbers and labels whole (labels up to 48
    characters) and its header's longest word; headers wrap at spaces. Each
    part repeats the first ``keep`` columns (the row's label and budget), so that
    every part reads on its own; nothing is truncated.
    """
    rows = [list(r) for r in rows]
    cells = [[format_cell(v) for v in r] for r in rows]
    numeric = [bool(rows) and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(columns))]
    mins = [_min_width(str(c), [x[i] for x in cells], numeric[i]) for i, c in enumerate(columns)]
    natural = [max([len(str(c)), *(len(x[i]) for x in cells)]) for i, c in enumerate(columns)]
    parts: list[list[int]] = []
    current = list(range(min(keep, len(columns))))
    for i in range(len(current), len(columns)):
        if sum(mins[j] + 3 for j in [*current, i]) + 1 > width and len(current) > keep:
            parts.append(current)
            current = list(range(keep))
        current.append(i)
    parts.append(current)
    tables = []
    for n, part in enumerate(parts):
        sizes = {i: mins[i] for i in part}
        spare = width - 1 - sum(sizes[i] + 3 for i in part)
        for i in part:  # widen towards each column's natural width, left to right
            extra = max(0, min(natural[i] - sizes[i], spare))
            sizes[i] += extra
            spare -= extra
        name = title if len(parts) == 1 or title is None else f"{title} ({n + 1}/{len(parts)})"
        tables.append(table(name, [columns[i] for i in part], [[r[i] for i in part] for r in rows],
                            widths=[sizes[i] for i in part]))
    return tables


def print_rows(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str = "table",
               caption: str | None = None, console: Console | None = None) -> None:
    """Print a table on stdout in ``fmt`` (see :mod:`replaceme.formats`); a rich table fits the console's width."""
    from replaceme.formats import render

    console = console or stdout
    rows = [list(r) for r in rows]
    if fmt != "table":
        console.out(render(columns, rows, fmt), end="", highlight=False)
        return
    tables = fit_tables(title, columns, rows, console.width)
    tables[-1].caption = caption
    for tbl in tables:
        console.print(tbl)
