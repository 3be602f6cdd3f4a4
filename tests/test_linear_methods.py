"""ReplaceMe compensators end to end on tiny models and on the real stories260K."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import tiny_model

import replaceme
from replaceme.calibration import CalibrationSpec


def _prune(model, tokenizer, path, method="replaceme-cosine", **options):
    spec = CalibrationSpec(str(path), samples=40, max_length=48, batch_size=4)
    return replaceme.prune(model, method=method, layers=2, calibration=spec, tokenizer=tokenizer, **options)


def test_refit_changes_only_the_later_blocks(tokenizer, calib_file):
    base = tiny_model("llama", layers=8)
    opts = dict(num_blocks=2, solver="lbfgs", lbfgs_steps=20)
    once = _prune(copy.deepcopy(base), tokenizer, calib_file, **opts)
    refit = _prune(copy.deepcopy(base), tokenizer, calib_file, refit=True, **opts)
    first, second = once.outcome.compensations, refit.outcome.compensations
    assert [c.block for c in first] == [c.block for c in second] and len(first) == 2
    assert not first[0].block.touches(first[1].block)  # the map of block 2 needs layer start-1
    torch.testing.assert_close(first[0].transform, second[0].transform)
    assert not torch.allclose(first[1].transform, second[1].transform)
    assert second[1].diagnostics["refit"] and not second[0].diagnostics["refit"]
    assert refit.model.config.num_hidden_layers == 6


def test_every_block_starts_after_layer_zero(tokenizer, calib_file):
    from replaceme.errors import ReplacemeError

    with pytest.raises(ReplacemeError, match="layer 0"):
        _prune(tiny_model("llama"), tokenizer, calib_file, method="replaceme-lstsq", selector="range", start=0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["replaceme-lstsq", "replaceme-cosine"])
def test_compensation_beats_plain_removal_on_held_out_text(method, shared, tokenizer):
    """On the real model, the linear map recovers part of what removing the same block loses."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from replaceme.evaluation import EvalSpec, evaluate

    path = shared / "models" / "stories260K"
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    spec = CalibrationSpec(str(shared / "data" / "tinystories" / "valid.txt[:2000]"), samples=128, max_length=256)
    evaluation = EvalSpec(ppl=[str(shared / "data" / "tinystories" / "valid.txt[3000:]")], max_ppl_tokens=20000)
    results = {}
    for name in ("uidl", method):
        pruned = replaceme.prune(copy.deepcopy(base), method=name, layers=1, calibration=spec, tokenizer=tok)
        results[name] = (pruned.plan.blocks, evaluate(pruned.model, tok, evaluation).metrics)
    assert results["uidl"][0] == results[method][0], "both methods must remove the same block"
    key = next(iter(results["uidl"][1]))
    assert results[method][1][key] < results["uidl"][1][key]


@pytest.mark.parametrize("spill", [False, True])
def test_cosine_fit_read_in_chunks_matches_the_stacked_sample(tokenizer, calib_file, tmp_path, spill):
    """chunk_tokens bounds what the fit holds; L-BFGS over chunks reaches the same map
    (also from the memory-mapped spill)."""
    base = tiny_model("llama", layers=6)
    opts = dict(solver="lbfgs", lbfgs_steps=15, token_budget=2000)
    if spill:
        opts["spill_dir"] = str(tmp_path / "spill")
    whole = _prune(copy.deepcopy(base), tokenizer, calib_file, **opts).outcome.compensations[0]
    chunked = _prune(copy.deepcopy(base), tokenizer, calib_file, chunk_tokens=300, **opts).outcome.compensations[0]
    assert chunked.block == whole.block and chunked.diagnostics["tokens"] == whole.diagnostics["tokens"] > 600
    assert whole.diagnostics["chunks"] == 1 and chunked.diagnostics["chunks"] >= 3
    assert chunked.diagnostics["activation_bytes"] <= 300 * 32 * 4 * 2 < whole.diagnostics["activation_bytes"]
    assert chunked.diagnostics["loss_first"] == pytest.approx(whole.diagnostics["loss_first"], rel=1e-5)
    assert chunked.diagnostics["loss_last"] == pytest.approx(whole.diagnostics["loss_last"], rel=5e-3)
    # L-BFGS on the scale-free cosine objective follows float32 summation order: close, not equal
    assert float((chunked.transform - whole.transform).norm() / whole.transform.norm()) < 5e-2


def test_cosine_start_depends_on_the_sample_alone(tokenizer, calib_file):
    """The default cosine fit (L-BFGS from a least-squares start) uses no Gram sums of the
    pass, whose float64 reduction under torchrun differs from one process in the last bits
    (enough for L-BFGS to end 2e-3 apart): its start is the least-squares map of the
    sample it fits, which rank 0 holds exactly as one process does."""
    base = tiny_model("llama", layers=6)
    result = _prune(copy.deepcopy(base), tokenizer, calib_file, lbfgs_steps=1, token_budget=500)
    assert result.stats_memory["gram"] == 0
    comp = result.outcome.compensations[0]
    assert comp.diagnostics["loss_first"] < 0.5  # started from the sample's LSTSQ map, not T = I
    reference = _prune(copy.deepcopy(base), tokenizer, calib_file, lbfgs_steps=1, token_budget=500, init="identity")
    assert comp.diagnostics["loss_first"] < reference.outcome.compensations[0].diagnostics["loss_first"]
