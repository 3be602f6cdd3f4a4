"""``compare`` resumes notice change: a row's key covers the content of what it reads
(model weights, evaluation files, calibration file), so a file changed in place
recomputes the rows it affects; the manifest lists the exact paths written."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner
from tiny import calibration_text, tiny_model

from replaceme.calibration import CalibrationSpec
from replaceme.cli import cli
from replaceme.compare.plan import ComparePlan, MethodEntry
from replaceme.compare.schedule import Schedule
from replaceme.evaluation.spec import EvalSpec
from replaceme.model_files import checkpoint_fingerprint
from replaceme.stats.cache import model_fingerprint


def _same_size_and_time(path, text):
    """Rewrite ``path`` with ``text`` (same length) and put its modification time back."""
    before = os.stat(path)
    assert len(text.encode()) == before.st_size
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns


@pytest.fixture
def plan(tmp_path, tiny_dir):
    calib = calibration_text(tmp_path / "calib.txt", records=20)
    evalf = calibration_text(tmp_path / "eval.txt", records=10, seed=7)
    return ComparePlan(model=str(tiny_dir), methods=[MethodEntry("uidl"), MethodEntry("replaceme-lstsq")], layers=[1],
                       calibration=CalibrationSpec(str(calib)), evaluation=EvalSpec(ppl=[str(evalf)]))


def _keys(plan, fingerprint="weights"):
    return {(s.label, s.layers): s.key for s in Schedule.build(plan, fingerprint).slots}


def test_row_keys_follow_the_content_of_what_each_row_reads(plan, tmp_path):
    before = _keys(plan)
    assert before == _keys(plan) and len(set(before.values())) == 3  # stable, and one per row

    # the model's weights: every row
    assert not set(_keys(plan, "other weights").values()) & set(before.values())

    # the calibration file, same size and time: the pruned rows, not the baseline
    calib = tmp_path / "calib.txt"
    _same_size_and_time(calib, calib.read_text().swapcase())
    after = _keys(plan)
    assert after[("baseline", 0)] == before[("baseline", 0)]
    assert after[("uidl", 1)] != before[("uidl", 1)] and after[("replaceme-lstsq", 1)] != before[("replaceme-lstsq", 1)]

    # the perplexity file, same size and time: every row (each is evaluated on it)
    evalf = tmp_path / "eval.txt"
    _same_size_and_time(evalf, evalf.read_text().swapcase())
    assert not set(_keys(plan).values()) & set(after.values())


def test_model_fingerprint_sees_a_changed_weight(tiny_dir):
    model = tiny_model("llama")
    first = model_fingerprint(model)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3
    assert model_fingerprint(model) != first


def test_checkpoint_fingerprint_sees_a_new_file_time_size_or_sampled_content(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    first = checkpoint_fingerprint([weights], "{}")
    assert checkpoint_fingerprint([weights], "{}") == first
    assert checkpoint_fingerprint([weights], '{"a": 1}') != first  # the config
    info = os.stat(weights)
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns + 1))
    assert checkpoint_fingerprint([weights], "{}") != first  # an edit's new modification time
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns))
    data = bytearray(weights.read_bytes())
    data[len(data) // 17] ^= 1  # one byte of a sampled block, the time put back
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert checkpoint_fingerprint([weights], "{}") != first


def _run(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return {(r["method"], r["layers"]): r for r in json.loads(result.stdout)}


@pytest.mark.slow
def test_resume_recomputes_rows_after_the_model_or_the_ppl_file_changed(tmp_path, tiny_dir, tokenizer):
    calib = calibration_text(tmp_path / "calib.txt", records=16)
    evalf = calibration_text(tmp_path / "eval.txt", records=10, seed=7)
    out = tmp_path / "out"
    args = ["compare", str(tiny_dir), "-n", "1", "--calib", str(calib), "--calib-samples", "8", "--max-length", "32",
            "--ppl", str(evalf), "--context-length", "32", "--output", str(out), "--json", "-m", "uidl"]
    ppl = next(k for k in _run(args)[("baseline", 0)] if k.startswith("ppl"))
    first = _run(args)
    assert len(list((out / "rows").iterdir())) == 2

    # the perplexity text changes in place (same size, same time): every row is recomputed
    _same_size_and_time(evalf, evalf.read_text()[::-1])
    second = _run(args)
    assert second[("baseline", 0)][ppl] != first[("baseline", 0)][ppl]
    assert len(list((out / "rows").iterdir())) == 4

    # the model is fine-tuned in place; adding a method then gives a table of fresh rows only
    changed = tiny_model("llama", seed=1)
    changed.save_pretrained(tiny_dir)
    third = _run([*args, "-m", "replaceme-lstsq"])
    assert third[("baseline", 0)][ppl] != second[("baseline", 0)][ppl]
    assert third[("uidl", 1)][ppl] != second[("uidl", 1)][ppl]
    saved = json.loads((out / "results.json").read_text())["rows"]
    keys = {r["key"] for r in saved}
    assert len(keys) == 3 and len(list((out / "rows").iterdir())) == 7

    # the ownership record lists exact paths, every one of them (no pattern), each by content
    owned = json.loads((out / ".replaceme-record.json").read_text())["files"]
    assert {f"rows/{k}.json" for k in keys} <= set(owned)
    assert not [f for f in owned if any(c in f for c in "*?[")]
    assert all("sha256" in entry for entry in owned.values())  # no write was left pending
