"""``--disk-budget``: when the activations between layers would exceed it, the engine streams
the layers once per group of batches, with the same results as one sweep."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from tiny import calibration_text, make_tokenizer, tiny_model

import replaceme
from replaceme.calibration import CalibrationSpec
from replaceme.errors import ReplacemeError
from replaceme.evaluation import EvalSpec, evaluate
from replaceme.offload import load_offloaded
from replaceme.offload.budget import parse_size, sweeps
from replaceme.registry import adapter_for


def test_sizes_and_groups():
    assert parse_size("200G") == 200 * 2**30 and parse_size("1.5k") == 1536 and parse_size(4096) == 4096
    assert parse_size("auto") is None and parse_size(None) is None
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(ReplacemeError, match="disk-budget"):
            parse_size(bad)
    assert sweeps([4, 4, 4, 4], 8) == [[0, 1], [2, 3]]
    assert sweeps([10, 1, 1], 4) == [[0], [1, 2]]  # a batch above the budget still runs, alone
    assert sweeps([1, 2, 3], 100) == [[0, 1, 2]]


def test_small_budget_sweeps_give_the_same_weights(tmp_path):
    src = tmp_path / "src"
    tiny_model("qwen2").save_pretrained(src)
    make_tokenizer().save_pretrained(src)
    spec = CalibrationSpec(str(calibration_text(tmp_path / "calib.txt", records=24)), samples=12, max_length=32,
                           batch_size=4)
    out = {}
    for budget in (None, "1K"):  # 1 KiB: every batch in a sweep of its own
        result = replaceme.prune(str(src), method="replaceme-lstsq", layers=2, calibration=spec, use_cache=False,
                                 offload=True, disk_budget=budget)
        out[budget] = replaceme.save_pruned(result, tmp_path / f"out-{budget}")
    sweeps_run = json.loads((out["1K"] / "pruning.json").read_text())["offload"]["sweeps"]
    assert sweeps_run["statistics"] == 3
    one, many = (load_file(out[b] / "model.safetensors") for b in (None, "1K"))
    for name in one:
        assert (one[name] - many[name]).abs().max() <= 1e-5 * one[name].abs().max().clamp_min(1), name


def test_small_budget_evaluation_equals_one_sweep(tmp_path, monkeypatch):
    src = tmp_path / "src"
    tiny_model("llama").save_pretrained(src)
    make_tokenizer().save_pretrained(src)
    text = calibration_text(tmp_path / "text.txt", records=12)
    spec = EvalSpec(ppl=[str(text)], context_length=24, ppl_batch_size=2, max_ppl_tokens=200, device="cpu",
                    dtype="float32")
    results = {}
    for budget in (None, 1):
        offloaded, tokenizer = load_offloaded(str(src), device="cpu", dtype="float32", trust_remote_code=False,
                                              adapter_for=adapter_for, disk_budget=budget)
        results[budget] = evaluate(offloaded.model, tokenizer, spec, offloaded=offloaded).details[f"ppl:{text}"]
        assert offloaded.sweeps["evaluation"] == (1 if budget is None else -(-results[budget]["windows"] // 2))
    assert results[1]["nll"] == pytest.approx(results[None]["nll"], rel=1e-12)
