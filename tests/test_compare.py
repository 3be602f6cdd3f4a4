"""``compare``: one table with a baseline, exports, failing methods, and resume
after an interruption ends with the same table."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from tiny import calibration_text, tiny_model

from replaceme.cli import cli
from replaceme.plugin import Compensator, Method, temporary_plugin


class Exploding(Compensator):
    """Raises during compensation: a ValueError, or a KeyboardInterrupt when asked to (a 'kill')."""

    name = "exploding"
    description = "test"

    def compensate(self, plan, ctx):
        if os.environ.get("REPLACEME_TEST_INTERRUPT"):
            raise KeyboardInterrupt
        raise ValueError("boom")


@pytest.fixture
def exploding():
    with temporary_plugin("exploding-test", compensators=[Exploding],
                          methods=[Method("explodes", "angular-distance", "exploding", "remove")]):
        yield


@pytest.fixture
def setup(tmp_path, tokenizer):
    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    calib = calibration_text(tmp_path / "calib.txt", records=40)
    evalf = calibration_text(tmp_path / "eval.txt", records=20, seed=7)
    return model_dir, calib, evalf


def compare_args(model_dir, calib, evalf, out, *methods):
    args = ["compare", str(model_dir), "--layers", "1,2", "--calib", str(calib), "--calib-samples", "16",
            "--max-length", "48", "--ppl", str(evalf), "--context-length", "32", "--output", str(out), "--json"]
    for m in methods:
        args += ["-m", m]
    return args


def test_compare_table_files_and_resume(setup, tmp_path):
    model_dir, calib, evalf = setup
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, compare_args(model_dir, calib, evalf, out, "uidl", "replaceme-lstsq"))
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["method"], r["layers"]) for r in rows] == [
        ("baseline", 0), ("uidl", 1), ("replaceme-lstsq", 1), ("uidl", 2), ("replaceme-lstsq", 2)]
    base = rows[0]
    assert base["retained %"] == pytest.approx(100.0)
    ppl = next(k for k in base if k.startswith("ppl"))
    for r in rows[1:]:
        assert r["retained %"] == pytest.approx(100 * base[ppl] / r[ppl])
        assert r["prune s"] is not None and r["peak RSS MB"] > 0
    for name in ("results.csv", "results.md", "results.json", "retained.png", "sweep.png", "distances.png", "distances.csv"):
        assert (out / name).exists(), name
    provenance = json.loads((out / "results.json").read_text())["provenance"]
    assert provenance["versions"]["torch"] and provenance["plan"]["calibration"]["samples"] == 16
    assert "selector:angular-distance" in provenance["options"]["uidl"]
    from importlib.metadata import version

    assert provenance["stages"]["replaceme-lstsq"]["compensator"] == {
        "name": "lstsq", "distribution": "replaceme", "version": version("replaceme")}
    assert provenance["project"]["version"] == version("replaceme")
    for r in rows[1:]:  # perplexity only: the ratio decides collapse, and the best row of each budget is marked
        assert r["ppl ratio"] == pytest.approx(r[ppl] / base[ppl])
    assert {r["layers"] for r in rows if r["flag"] == "best"} <= {1, 2}

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "rows").iterdir()}
    again = CliRunner().invoke(cli, compare_args(model_dir, calib, evalf, out, "uidl", "replaceme-lstsq"))
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == rows
    assert {p.name: p.stat().st_mtime_ns for p in (out / "rows").iterdir()} == stamps, "finished rows were recomputed"


@pytest.mark.slow
def test_interrupted_compare_resumes_to_the_same_table(setup, tmp_path, exploding, monkeypatch):
    model_dir, calib, evalf = setup
    methods = ("uidl", "replaceme-lstsq", "explodes")
    full = CliRunner().invoke(cli, compare_args(model_dir, calib, evalf, tmp_path / "full", *methods))
    assert full.exit_code == 2  # the exploding method fails, the others go on

    # the same command, killed (KeyboardInterrupt) in the middle of its third row
    out = tmp_path / "resumed"
    monkeypatch.setenv("REPLACEME_TEST_INTERRUPT", "1")
    killed = CliRunner().invoke(cli, compare_args(model_dir, calib, evalf, out, *methods))
    assert killed.exit_code != 0 and isinstance(killed.exception, (KeyboardInterrupt, SystemExit))
    assert len(list((out / "rows").iterdir())) == 2
    monkeypatch.delenv("REPLACEME_TEST_INTERRUPT")
    rerun = CliRunner().invoke(cli, compare_args(model_dir, calib, evalf, out, *methods))
    assert rerun.exit_code == 2

    def table(path):
        rows = json.loads((path / "results.json").read_text())["summary"]
        return [{k: v for k, v in r.items() if k not in ("prune s", "eval s", "peak RSS MB")} for r in rows]

    assert table(out) == table(tmp_path / "full")
    assert len(table(out)) == 7


@pytest.mark.slow
def test_failing_method_gets_an_error_row_and_nonzero_exit(setup, tmp_path, exploding):
    model_dir, calib, evalf = setup
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, compare_args(model_dir, calib, evalf, out, "uidl", "explodes"))
    assert result.exit_code == 2
    assert "explodes" in result.output and "boom" in result.output
    rows = json.loads((out / "results.json").read_text())["summary"]
    failed = [r for r in rows if r["method"] == "explodes"]
    assert len(failed) == 2 and all("ValueError: boom" in r["error"] for r in failed)
    assert all(r["retained %"] is not None for r in rows if r["method"] == "uidl")


def test_output_with_other_results_needs_overwrite(setup, tmp_path):
    model_dir, calib, evalf = setup
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = CliRunner().invoke(cli, compare_args(model_dir, calib, evalf, out, "uidl"))
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "mine.txt").read_text() == "keep"


@pytest.mark.slow
def test_plan_file(setup, tmp_path):
    model_dir, calib, evalf = setup
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"model: {model_dir}\nlayers: [1]\ncalib: {calib}\ncalib_samples: 8\nmax_length: 32\nppl: [{evalf}]\n"
        "methods:\n  - uidl\n  - name: replaceme-cosine\n    label: cosine-lbfgs\n    options: {solver: lbfgs, lbfgs_steps: 5}\n"
    )
    result = CliRunner().invoke(cli, ["compare", "--plan", str(plan), "--json"])
    assert result.exit_code == 0, result.output
    assert [r["method"] for r in json.loads(result.stdout)] == ["baseline", "uidl", "cosine-lbfgs"]
