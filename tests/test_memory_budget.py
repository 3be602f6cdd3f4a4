"""``--memory-budget``: the statistics plan (passes, sample in RAM or on disk, its size)
fits the budgets, changes no pruned weight, is printed before the pass and recorded, and
a run that cannot fit is refused before the calibration pass."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from click.testing import CliRunner
from tiny import calibration_text, tiny_model
from weight_spy import WeightSpy

import replaceme
from replaceme.calibration import CalibrationSpec
from replaceme.cli import cli
from replaceme.errors import ReplacemeError
from replaceme.methods import resolve_method
from replaceme.passes import plan_statistics
from replaceme.pipeline import Run
from replaceme.resources import auto_memory_budget

H, L, N = 64, 8, 2
MIB = 2**20


def _plan(method: str, memory: int, disk: int = 2**40, **kw):
    """The plan for one run of ``method`` at -n 2 on an 8-layer model of hidden 64, with a
    sample of 10 token slots per requested sample token (closed form, no model)."""
    run = Run(resolve_method(method), N)
    live = [(run, run.method.stats_request(L, N))]
    return plan_statistics(live, None, live[0][1], num_layers=L, hidden=H, dtype_bytes=4,
                           slots_of=lambda req: 10 * req.sample_tokens if req.wants_sample else 0,
                           memory_budget=memory, disk_budget=disk, **kw)


def test_the_planner_takes_two_passes_then_disk_then_a_smaller_sample_then_refuses():
    gram_one = 16 * H * H * (L - N)  # XᵀX + XᵀY of the 6 candidates, float64
    assert _plan("replaceme-lstsq", 1 << 30).two is False  # fits: one pass, in RAM
    small = _plan("replaceme-lstsq", gram_one // 2)  # one pass does not fit: two hold 16·h² (+ the first's tables)
    assert small.two and small.chosen.gram_bytes == 16 * H * H and not small.spill
    assert small.ram_bytes <= small.memory_budget
    # cosine: no Gram sums, a sample of 3 tensors × 10 slots per token × h × 4 bytes for the chosen block
    sample = 3 * 10 * 65536 * H * 4
    fit = _plan("replaceme-cosine", sample + MIB)
    assert fit.two and not fit.spill and fit.chosen.sample_bytes == sample
    spilled = _plan("replaceme-cosine", MIB)
    assert spilled.spill and spilled.disk_bytes == sample and spilled.ram_bytes < MIB and spilled.sample_cap is None
    capped = _plan("replaceme-cosine", MIB, disk=sample // 4)
    assert capped.sample_cap == 65536 // 4 and capped.first.sample_tokens <= capped.sample_cap
    assert capped.disk_bytes == sample // 4  # the largest whole sample that fits
    with pytest.raises(ReplacemeError, match="memory-budget is 32.0 KB"):
        _plan("replaceme-lstsq", 32 * 1024)  # 16·h² = 64 KB even in two passes
    with pytest.raises(ReplacemeError, match="--stats-passes 2 holds 64.0 KB"):
        _plan("replaceme-lstsq", gram_one // 2, passes="1")


def test_auto_budget_is_a_quarter_of_the_weights_within_half_the_memory():
    assert auto_memory_budget(10 * MIB, available=64 * 2**30) == 256 * MIB
    assert auto_memory_budget(8 * 2**30, available=64 * 2**30) == 2 * 2**30
    assert auto_memory_budget(8 * 2**30, available=2 * 2**30) == 2**30


def _prune(model, tokenizer, calib_file, method="replaceme-lstsq", **kw):
    spec = CalibrationSpec(str(calib_file), samples=40, max_length=48, batch_size=4)
    return replaceme.prune(model, method=method, layers=N, calibration=spec, tokenizer=tokenizer, use_cache=False, **kw)


def test_a_tiny_budget_prunes_the_same_weights_as_an_unlimited_one(tokenizer, calib_file, caplog):
    base = tiny_model("llama", layers=L)
    wide = _prune(copy.deepcopy(base), tokenizer, calib_file, memory_budget="64G")
    caplog.clear()  # the wide run's plan line too, when an earlier test left the logger at INFO
    with caplog.at_level(logging.INFO, logger="replaceme"):
        tight = _prune(copy.deepcopy(base), tokenizer, calib_file, memory_budget="72K")
    m = tight.stats_memory
    assert wide.stats_memory["passes"] == 1 and not wide.stats_memory["sample_on_disk"]
    assert m["passes"] == 2 and m["sample_on_disk"] and m["memory_budget"] == 72 * 1024
    assert m["gram"] <= m["ram_bytes"] <= m["memory_budget"] < wide.stats_memory["gram"] + wide.stats_memory["sample"]
    for name, tensor in wide.model.state_dict().items():
        assert torch.equal(tensor, tight.model.state_dict()[name]), name
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("statistics: "))
    assert line.startswith("statistics: 2 passes, memory ") and "of 72.0 KB budget" in line and "on disk" in line
    shown = [r.getMessage() for r in caplog.records]
    assert shown.index(line) < next(i for i, t in enumerate(shown) if t.startswith("shared calibration pass"))


def test_a_tiny_disk_budget_draws_a_smaller_sample_and_says_so(tokenizer, calib_file, caplog):
    with caplog.at_level(logging.WARNING, logger="replaceme"):
        result = _prune(tiny_model("llama", layers=L), tokenizer, calib_file, "replaceme-cosine",
                        memory_budget="1K", disk_budget="300K", lbfgs_steps=3)
    m = result.stats_memory
    slot_bytes = 3 * 4 * 48 * 32 * 4  # 3 tensors of one batch: 4 × 48 token slots × hidden 32 × float32
    assert m["sample_cap_tokens"] is not None and m["sample_on_disk"] and m["spilled_bytes"] <= 300 * 1024
    assert m["spilled_bytes"] == m["sample"] and m["sample"] % slot_bytes == 0 and m["sample"] + slot_bytes > 300 * 1024
    assert any("--disk-budget 300.0 KB beside --memory-budget 1.0 KB" in r.getMessage() for r in caplog.records)
    assert result.outcome.compensations[0].diagnostics["chunk_tokens"] == 1024  # the fit's chunk floor


@pytest.mark.parametrize("command", ["prune", "compare", "distances"])
def test_a_plan_that_cannot_fit_is_refused_in_one_line_before_the_model_loads(tmp_path, tiny_dir, calib_file, command,
                                                                              monkeypatch):
    spy = WeightSpy(abort=True).install(monkeypatch)  # any read of the weights ends the run there
    data = ["--calib", str(calib_file), "--calib-samples", "8", "--max-length", "32", "--device", "cpu", "--no-cache"]
    out = tmp_path / "out"
    args = {"prune": ["-m", "replaceme-lstsq", "-n", "2", "--output", str(out)],
            "compare": ["-m", "uidl", "-m", "replaceme-lstsq", "-n", "2", "--ppl", str(calib_file), "--output", str(out)],
            "distances": ["-n", "2", "--loss", "--batch-size", "2", "--holdout-fraction", "0.5"]}[command]  # held out
    result = CliRunner().invoke(cli, ["-v", command, str(tiny_dir), *args, *data, "--memory-budget", "1K"])
    assert result.exit_code == 2 and not spy.reads
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    # hidden 32: the float64 XᵀX and XᵀY of one block, 2 × 8 × 32² bytes, and the distance tables;
    # distances --loss compensates every block of 1 and 2 layers (starts 1..5): 8 × 32² × (5 XᵀX + 9 XᵀY) bytes
    need = "need 112.0 KB" if command == "distances" else "need 16.2 KB in memory"
    assert errors == [errors[0]] and need in errors[0] and "--memory-budget is 1.0 KB" in errors[0], errors
    assert "shared calibration pass" not in result.stderr and "statistics: " not in result.stderr
    assert not out.exists()


def _compare(model, text, extra=()):
    args = ["compare", str(model), "-m", "uidl", "-m", "replaceme-lstsq", "-m", "llm-streamline", "-n", "2",
            "--calib", str(text), "--calib-samples", "12", "--max-length", "32", "--batch-size", "4", "--ppl", str(text),
            "--context-length", "32", "--max-ppl-tokens", "200", "--device", "cpu", "-o", "token_budget", "600",
            "--no-cache", "--json", *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_compare_plans_its_statistics_within_the_budget_with_the_same_rows(tmp_path, tiny_dir):
    text = calibration_text(tmp_path / "text.txt", records=24)
    spill, out = tmp_path / "spill", tmp_path / "cmp"
    spill.mkdir()
    wide = _compare(tiny_dir, text)
    tight = _compare(tiny_dir, text, ["--memory-budget", "70K", "--spill-dir", str(spill), "--output", str(out)])
    key = f"ppl {text.name}"
    assert [(r["method"], r["blocks"], r[key]) for r in tight] == [(r["method"], r["blocks"], r[key]) for r in wide]
    memory = json.loads((out / "results.json").read_text())["provenance"]["statistics"]["statistics_memory"]
    assert memory["memory_budget"] == 70 * 1024 and memory["passes"] == 2 and memory["sample_on_disk"]
    assert memory["ram_bytes"] <= memory["memory_budget"] and list(spill.iterdir()) == []
