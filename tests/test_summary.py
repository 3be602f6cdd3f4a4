"""Summary metrics of a comparison: both retentions, perplexity ratio, collapse, best; tables and exports."""

from __future__ import annotations

import csv
import json
import math

import pytest
from rich.console import Console

from replaceme.compare.results import Row, frame_cells, summarise, to_frame, write_exports
from replaceme.compare.summary import CC_COLLAPSE, PPL_COLLAPSE
from replaceme.console import print_rows

CHANCE = {"boolq": 0.5, "piqa": 0.5, "hellaswag": 0.25}
PPL = "ppl:data/valid.txt[3000:]"


def row(label, layers, ppl, boolq, piqa, hellaswag, stderr=None):
    return Row(label=label, method="baseline" if label == "baseline" else label, layers=layers, key=f"{label}{layers}",
               metrics={PPL: ppl, "boolq": boolq, "piqa": piqa, "hellaswag": hellaswag},
               stderr=stderr or {}, chance=dict(CHANCE))


@pytest.fixture
def rows():
    return [
        row("baseline", 0, 7.8, 0.29, 0.60, 0.30, stderr={"piqa": 0.02, "boolq": 0.045, "hellaswag": 0.01}),
        row("uidl", 4, 1.5e6, 0.70, 0.50, 0.255),         # collapsed: boolq flips at chance level
        row("replaceme-lstsq", 4, 9.0, 0.29, 0.58, 0.29),  # healthy
        row("block-removal", 4, 60.0, 0.40, 0.56, 0.29),   # perplexity 7.7x: not collapsed by the ppl rule
        row("uidl", 2, 114.6, 0.62, 0.52, 0.27),           # ppl ratio 14.7: collapsed
        row("replaceme-lstsq", 2, 8.1, 0.30, 0.59, 0.30),
    ]


def test_definitions_against_hand_computation(rows):
    by = {(r["method"], r["layers"]): r for r in summarise(rows)}
    base, good, bad = by[("baseline", 0)], by[("replaceme-lstsq", 4)], by[("uidl", 4)]
    # the paper's retained %: mean of score/baseline (baseline/score for perplexity)
    assert good["retained %"] == pytest.approx(100 * (7.8 / 9.0 + 0.29 / 0.29 + 0.58 / 0.60 + 0.29 / 0.30) / 4)
    assert bad["retained %"] == pytest.approx(100 * (7.8 / 1.5e6 + 0.70 / 0.29 + 0.50 / 0.60 + 0.255 / 0.30) / 4)
    assert bad["retained %"] > good["retained %"]  # the paper's figure rewards the collapsed row here
    # chance-corrected: boolq's baseline (0.29) is below chance and carries no information; piqa and hellaswag count
    assert good["retained (cc) %"] == pytest.approx(100 * ((0.58 - 0.5) / 0.1 + (0.29 - 0.25) / 0.05) / 2)
    assert bad["retained (cc) %"] == pytest.approx(100 * (0.0 / 0.1 + 0.005 / 0.05) / 2)
    assert base["retained (cc) %"] == pytest.approx(100) and base["ppl ratio"] == pytest.approx(1)
    assert good["ppl ratio"] == pytest.approx(9.0 / 7.8)
    assert by[("uidl", 2)]["ppl ratio"] == pytest.approx(114.6 / 7.8) and 114.6 / 7.8 >= PPL_COLLAPSE


def test_collapsed_rows_are_flagged_and_never_best(rows):
    by = {(r["method"], r["layers"]): r for r in summarise(rows)}
    assert by[("uidl", 4)]["collapsed"] and by[("uidl", 2)]["collapsed"]
    assert by[("uidl", 4)]["retained (cc) %"] <= CC_COLLAPSE
    assert not by[("replaceme-lstsq", 4)]["collapsed"] and not by[("block-removal", 4)]["collapsed"]
    best = {(r["method"], r["layers"]) for r in by.values() if r["best"]}
    assert best == {("replaceme-lstsq", 4), ("replaceme-lstsq", 2)}
    assert not by[("baseline", 0)]["best"]


def test_a_task_within_twice_its_stderr_of_chance_is_left_out(rows):
    rows[0].stderr["piqa"] = 0.06  # 0.60 - 0.5 = 0.1 < 2 x 0.06: piqa no longer informative
    good = {(r["method"], r["layers"]): r for r in summarise(rows)}[("replaceme-lstsq", 4)]
    assert good["retained (cc) %"] == pytest.approx(100 * (0.29 - 0.25) / 0.05)


def test_without_tasks_the_ratio_alone_decides(rows):
    for r in rows:
        r.metrics = {PPL: r.metrics[PPL]}
    by = {(r["method"], r["layers"]): r for r in summarise(rows)}
    assert by[("uidl", 2)]["collapsed"] and by[("uidl", 2)]["retained (cc) %"] is None
    assert by[("replaceme-lstsq", 2)]["best"]


def test_non_finite_perplexity_is_collapse(rows):
    rows[2].metrics[PPL] = math.inf
    rec = {(r["method"], r["layers"]): r for r in summarise(rows)}[("replaceme-lstsq", 4)]
    assert rec["ppl ratio"] == math.inf and rec["collapsed"] and not rec["best"]


def test_table_fits_100_columns_without_cutting_labels(rows):
    rows.append(row("replaceme-cosine (-o preset reference)", 4, 9.5, 0.3, 0.57, 0.28))
    console = Console(width=100, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    print_rows("stories260K: 5 layers", *frame_cells(to_frame(rows)), console=console, caption="shared pass")
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    for label in ("replaceme-lstsq", "block-removal", "replaceme-cosine (-o preset reference)", "collapsed", "best"):
        assert label in text, label
    for header in ("retained %", "retained (cc) %", "ppl ratio", "prune s", "params"):
        assert all(word in text for word in header.split())


def test_exports_flag_collapse_and_escape_labels(rows, tmp_path):
    rows.append(row("=cmd|' /C calc'!A0", 2, 8.0, 0.3, 0.59, 0.3))
    written = write_exports(rows, tmp_path, {"versions": {}})
    assert {p.name for p in written} == {"results.csv", "results.md", "results.json", "retained.png", "sweep.png"}
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["definitions"]["chance_corrected_tasks"] == ["piqa", "hellaswag"]  # boolq's baseline is below chance
    assert data["definitions"]["ppl_collapse_ratio"] == PPL_COLLAPSE
    flags = {(r["method"], r["layers"]): (r["collapsed"], r["best"]) for r in data["summary"]}
    assert flags[("uidl", 4)] == (True, False) and flags[("replaceme-lstsq", 4)] == (False, True)
    with open(tmp_path / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert table[-1]["method"] == "'=cmd|' /C calc'!A0"
    assert {r["method"]: r["flag"] for r in table if r["layers"] == "4"}["uidl"] == "collapsed"
    md = (tmp_path / "results.md").read_text().splitlines()
    assert len(md) == 2 + len(rows) and md[-1].count("|") - md[-1].count("\\|") == md[0].count("|")
