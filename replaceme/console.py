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

T = TypeVar("T")

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


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """Build a rich table; numbers are right-aligned and formatted compactly."""
    tbl = Table(title=title, header_style="bold")
    rows = [list(r) for r in rows]
    for i, col in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
        tbl.add_column(col, justify="right" if numeric else "left")
    for r in rows:
        tbl.add_row(*(format_cell(v) for v in r))
    return tbl


def format_cell(value: Any) -> str:
    """Format one table cell: floats to 4 significant digits, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)
