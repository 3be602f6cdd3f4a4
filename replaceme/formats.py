"""Tables as text: plain, Markdown and CSV, every cell escaped for its format.

``--format`` of the commands that print tables (``compare``, ``evaluate``,
``distances``) picks one of :data:`FORMATS`:

- ``table`` (default): a rich table on the terminal, split into several
  narrower tables rather than truncating labels (see :func:`replaceme.console.fit_tables`);
- ``plain``: aligned columns separated by two spaces, never wrapped or
  truncated (for log files and ``grep``);
- ``markdown``: a GitHub table (``|`` and line breaks in cells escaped);
- ``csv``: RFC 4180 CSV, cells that a spreadsheet would run as a formula
  prefixed with ``'``.

Numbers are formatted by :func:`format_cell` in the text formats (4
significant digits), and written in full precision in CSV.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

from replaceme.escaping import csv_cell, md_cell

FORMATS = ("table", "plain", "markdown", "csv")


def format_cell(value: Any) -> str:
    """Format one table cell: floats to 4 significant digits, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def _clean(value: Any) -> Any:
    """Missing values (None, NaN from pandas) as None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def to_csv(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text; empty cells for missing values, text cells escaped against formulas."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180; a CR in a cell is then quoted
    writer.writerow([csv_cell(str(c)) for c in columns])
    for row in rows:
        writer.writerow(["" if _clean(v) is None else csv_cell(v) for v in row])
    return buffer.getvalue()


def to_markdown(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table; every cell stays in its cell whatever it holds."""
    lines = ["| " + " | ".join(md_cell(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(md_cell(format_cell(_clean(v))) for v in row) + " |")
    return "\n".join(lines) + "\n"


def to_plain(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Aligned plain text: numbers right-aligned, text left-aligned, nothing cut."""
    cells = [[" ".join(format_cell(_clean(v)).split()) for v in row] for row in rows]
    raw = [list(map(_clean, row)) for row in rows] if isinstance(rows, list) else None
    header = [" ".join(str(c).split()) for c in columns]
    widths = [max([len(header[i]), *(len(r[i]) for r in cells)]) for i in range(len(header))]
    numeric = [bool(raw) and all(isinstance(r[i], (int, float)) or r[i] is None for r in raw) for i in range(len(header))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in cells)]) + "\n"


def render(columns: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str) -> str:
    """``rows`` under ``columns`` as ``plain``, ``markdown`` or ``csv`` text."""
    rows = [list(r) for r in rows]
    if fmt == "csv":
        return to_csv(columns, rows)
    if fmt == "markdown":
        return to_markdown(columns, rows)
    if fmt == "plain":
        return to_plain(columns, rows)
    raise ValueError(f"no text rendering for format {fmt!r}; choose from plain, markdown, csv")
