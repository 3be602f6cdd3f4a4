"""Text written into documents (CSV, Markdown, model cards) cannot break out of its place."""

from __future__ import annotations

import csv
import io
import re

import pytest
from markdown_it import MarkdownIt

from replaceme.escaping import csv_cell, md_cell, md_code, md_fence, md_table_code, md_text
from replaceme.formats import to_csv, to_markdown, to_plain

HOSTILE = [
    "=HYPERLINK(\"http://evil\",\"x\")",
    "+1+1",
    "-2+3",
    "@SUM(A1:A2)",
    "\tTAB",
    "\rCR",
    "a|b|c",
    "line\nbreak | injected |",
    "```\nrm -rf /\n```",
    "`tick` and ``double``",
    "<script>alert(1)</script>",
    "\\|escaped pipe",
    "uidl\u2028sep",
]


def _gfm() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")


@pytest.mark.parametrize("label", HOSTILE)
def test_csv_cells_never_start_a_formula(label):
    text = to_csv(["method", "value"], [[label, 1.5], ["plain", -2.0]])
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == 3  # a line break inside a cell stays inside its quoted cell
    cell = rows[1][0]
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert cell.removeprefix("'") == label
    assert rows[2] == ["plain", "-2.0"]  # numbers stay numbers, even negative ones


def test_csv_cell_leaves_numbers_and_safe_text_alone():
    assert csv_cell(-3.5) == -3.5 and csv_cell("uidl") == "uidl" and csv_cell("=x") == "'=x"


@pytest.mark.parametrize("label", HOSTILE)
def test_markdown_cells_stay_in_their_cell(label):
    text = to_markdown(["method", "value"], [[label, 1.0], ["next", 2.0]])
    html = _gfm().render(text)
    assert html.count("<tr>") == 3  # header + 2 rows: nothing injected a row
    assert html.count("<td>") == 4  # 2 cells per row: nothing injected a cell
    assert "<script>" not in html


@pytest.mark.parametrize("label", HOSTILE)
def test_inline_code_and_fences_hold_any_text(label):
    tokens = _gfm().parseInline(md_code(label))[0].children
    code = [t for t in tokens if t.type == "code_inline"]
    assert len(code) == 1 and code[0].content.strip() == re.sub(r"[\t\r\n\u2028]", " ", label).strip()
    block = md_fence(label + "\n" + label, "bash")
    fences = [t for t in _gfm().parse(block + "\n\nafter") if t.type == "fence"]
    expected = (label + "\n" + label).replace("\r", "\n") + "\n"
    assert len(fences) == 1 and fences[0].content == expected


@pytest.mark.parametrize("label", HOSTILE)
def test_text_and_table_code_are_literal(label):
    html = _gfm().render(md_text(label))
    assert "<script>" not in html and "<h" not in html and "<code>" not in html
    table = "| a |\n|---|\n| " + md_table_code(label) + " |\n"
    assert _gfm().render(table).count("<td>") == 1


def test_plain_table_keeps_one_line_per_row():
    text = to_plain(["method", "ppl"], [["a\nb", 1.0], ["replaceme-lstsq-loss", None]])
    lines = text.splitlines()
    assert len(lines) == 4 and "replaceme-lstsq-loss" in lines[3] and lines[3].endswith("-")
