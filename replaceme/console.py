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

#: results go to stdout; when it is not a terminal (a file, a pipe) tables are 200 columns wide
#: unless $COLUMNS says otherwise
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)
stderr = Console(stderr=True)


#: third-party loggers that are quiet (errors only) unless -v (warnings) or -vv (info)
THIRD_PARTY_LOGGERS = ("transformers", "datasets", "lm_eval", "lm-eval", "huggingface_hub", "accelerate", "filelock",
                       "urllib3", "fsspec", "evaluate")


def setup_logging(verbose: int = 0) -> None:
    """Route the ``replaceme`` logger (and Python warnings) to stderr through rich, each
    line with its level; third-party libraries say only errors unless ``-v`` (their
    warnings) or ``-vv`` (their info); their progress bars show only with ``-vv``.
    Calling it again replaces the earlier setup (so ``-v`` after a command works)."""
    if verbose < 2:  # our own bars replace the per-file bars of transformers, the hub, datasets and lm-eval
        # (tqdm reads TQDM_DISABLE when it is first imported, which the commands do only after this)
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TQDM_DISABLE"] = "1"
    else:
        os.environ.pop("TQDM_DISABLE", None)
    handler = _log_handler()
    logger = logging.getLogger("replaceme")
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    logger.propagate = False
    logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger, with its level
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers = [handler]
    warnings_logger.propagate = False
    level = logging.ERROR if verbose == 0 else logging.WARNING if verbose == 1 else logging.INFO
    for name in THIRD_PARTY_LOGGERS:  # through our handler (with a level), never Python's bare last-resort one
        third = logging.getLogger(name)
        third.setLevel(level)
        third.handlers = [handler]
        third.propagate = False
    _quiet_transformers(verbose)


def _log_handler() -> logging.Handler:
    """Rich lines on a terminal; in a log file or pipe one plain line per record, ``LEVEL    message``
    (a record never wraps onto lines without its level)."""
    if stderr.is_terminal:
        return RichHandler(console=stderr, show_path=False, show_time=False, markup=False, show_level=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine("%(levelname)-8s %(message)s"))
    return handler


class _OneLine(logging.Formatter):
    """A record on one line: line breaks in the message (tracebacks aside) become spaces."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.exc_info else " ".join(text.split("\n"))


def _quiet_transformers(verbose: int) -> None:
    """transformers and datasets keep their own verbosity and progress-bar switches."""
    import sys as _sys

    level = logging.ERROR if verbose == 0 else logging.WARNING if verbose == 1 else logging.INFO
    for module, attr in (("transformers.utils.logging", "set_verbosity"), ("datasets.utils.logging", "set_verbosity")):
        if module in _sys.modules:
            getattr(_sys.modules[module], attr)(level)


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
        """Advance the bar; a total that turns out too small grows, so the count never exceeds it."""
        if self._progress is not None:
            text = "  ".join(f"{k} {v:.4g}" for k, v in info.items())
            task = self._progress.tasks[0]
            if task.total is not None and task.completed + advance > task.total:
                self._progress.update(self._task, total=task.completed + advance)
            self._progress.update(self._task, advance=advance, info=text)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            if exc[0] is None:  # finished early (converged): the bar ends complete, N of N
                self._progress.update(self._task, total=self._progress.tasks[0].completed)
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
