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
