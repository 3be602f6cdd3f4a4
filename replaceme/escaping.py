"""Escaping of text written into documents: CSV cells, Markdown and model cards.

Labels, method names, paths and option values come from users (and from
plugins); written raw they can turn a CSV cell into a spreadsheet formula, add
rows to a Markdown table, or close a code block in a model card. Every writer of
such a document goes through these functions.

- :func:`csv_cell`: a text cell that starts with ``=``, ``+``, ``-``, ``@``, a
  tab or a carriage return gets a leading ``'`` (the OWASP rule for CSV
  injection); numbers are left alone.
- :func:`md_cell`: ``|``, ``\\`` and HTML brackets escaped, line breaks (and other control characters)
  turned into spaces, so a value stays inside its cell.
- :func:`md_text`: inline Markdown punctuation escaped (headings, paragraphs).
- :func:`md_code`: an inline code span whose backtick fence is longer than any
  run of backticks inside it.
- :func:`md_fence`: a fenced code block likewise.
"""

from __future__ import annotations

import re
from typing import Any

#: first characters that make a spreadsheet evaluate a cell
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u2028\u2029\u0085]")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~])")
_TICKS = re.compile(r"`+")


def csv_cell(value: Any) -> Any:
    """``value`` safe for a CSV cell: text starting like a formula is prefixed with ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def _one_line(text: str) -> str:
    return _CONTROL.sub(" ", text.replace("\r\n", " "))


def md_cell(value: Any) -> str:
    """``value`` as the text of one Markdown table cell (no ``|`` or line break can escape it)."""
    text = _one_line(str(value)).replace("\t", " ")
    return re.sub(r"([\\|<>])", r"\\\1", text)


def md_text(value: Any) -> str:
    """``value`` as literal inline Markdown text: one line, punctuation escaped."""
    return _MD_SPECIAL.sub(r"\\\1", _one_line(str(value)).replace("\t", " "))


def _fence_length(text: str, minimum: int) -> int:
    return max([minimum, *(len(run) + 1 for run in _TICKS.findall(text))])


def md_code(value: Any) -> str:
    """``value`` as an inline code span, on one line, whatever backticks it holds.

    Inside a table cell wrap the result with :func:`md_table_code` instead.
    """
    text = _one_line(str(value)).replace("\t", " ")
    fence = "`" * _fence_length(text, 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_table_code(value: Any) -> str:
    """An inline code span fit for a table cell (``|`` escaped, which GFM honours inside code)."""
    return md_code(value).replace("|", "\\|")


def md_fence(text: str, language: str = "") -> str:
    """``text`` as a fenced code block whose fence no line of ``text`` can close."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    fence = "`" * _fence_length(text, 3)
    language = re.sub(r"[^A-Za-z0-9_+-]", "", language)
    return f"{fence}{language}\n{text.rstrip(chr(10))}\n{fence}"
