"""bf16/fp16 models through ``lstsq`` and ``llm-streamline``: statistics in float64,
folds in float64 cast back, training in float32 cast back; the pruned model keeps
its dtype, stays finite, and agrees with the same method run in float32."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import tiny_model

import replaceme
from replaceme.calibration import CalibrationSpec

IDS = torch.tensor([[1, 5, 9, 14, 3, 22, 7, 8, 30, 2]])
FAST = {"llm-streamline": {"token_budget": 600}}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["replaceme-lstsq", "llm-streamline"])
def test_half_precision_model_through_the_method(method, dtype, tokenizer, calib_file):
    spec = CalibrationSpec(str(calib_file), samples=12, max_length=40, batch_size=4, seed=0)
    base = tiny_model("llama")
    ref = replaceme.prune(copy.deepcopy(base), method=method, layers=2, calibration=spec, tokenizer=tokenizer,
                          options=FAST.get(method), use_cache=False)
    half = replaceme.prune(copy.deepcopy(base).to(dtype), method=method, layers=2, calibration=spec,
                           tokenizer=tokenizer, options=FAST.get(method), use_cache=False)
    assert {p.dtype for p in half.model.parameters()} == {dtype}
    assert half.model.config.num_hidden_layers == 4
    assert half.plan.blocks == ref.plan.blocks
    with torch.no_grad():
        got = half.model(IDS, use_cache=False).logits.float()
        want = ref.model(IDS, use_cache=False).logits
    assert torch.isfinite(got).all()
    assert float((got - want).norm() / want.norm()) < 0.05
    if method == "replaceme-lstsq":
        t_half, t_ref = half.outcome.compensations[0].transform, ref.outcome.compensations[0].transform
        assert t_half.dtype == torch.float64
        assert float((t_half - t_ref).norm() / t_ref.norm()) < 0.05
