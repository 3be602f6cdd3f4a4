"""Every registered method on every supported architecture keeps the contract:
the layer count drops as asked, the config follows, logits keep their shape,
generation with the KV cache works, save → from_pretrained is identical, and
the result is deterministic under a seed."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import ARCHS, tiny_model
from transformers import AutoModelForCausalLM

import replaceme
from replaceme.calibration import CalibrationSpec
from replaceme.registry import registry

METHODS = sorted(registry().methods)
IDS = torch.tensor([[1, 5, 9, 14, 3, 22, 7, 8, 30, 2]])
#: small but real settings so every method runs in a second or two
FAST = {"replaceme-cosine": {"epochs": 2}, "llm-streamline": {"token_budget": 2000}}


@pytest.fixture(scope="module")
def calib_path(tmp_path_factory):
    from conftest import calibration_text

    return calibration_text(tmp_path_factory.mktemp("calib") / "calib.txt", records=24)


def run(model, method, layers, tokenizer, calib_path):
    spec = CalibrationSpec(str(calib_path), samples=12, max_length=48, batch_size=4, seed=0)
    return replaceme.prune(model, method=method, layers=layers, calibration=spec, tokenizer=tokenizer,
                           seed=0, **FAST.get(method, {}))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_method_contract(method, arch, tokenizer, calib_path, tmp_path):
    base = tiny_model(arch)
    with torch.no_grad():
        logits_before = base(IDS, use_cache=False).logits
    layers = 2
    result = run(copy.deepcopy(base), method, layers, tokenizer, calib_path)
    model = result.model
    assert model.config.num_hidden_layers == 6 - layers
    assert result.outcome.layers_after == 6 - layers
    assert all(b.start >= 0 and b.end <= 6 for b in result.plan.blocks)
    with torch.no_grad():
        logits = model(IDS, use_cache=False).logits
        assert logits.shape == logits_before.shape
        assert torch.isfinite(logits).all()
        cached = model.generate(IDS[:, :4], max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = model.generate(IDS[:, :4], max_new_tokens=5, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)

    out = replaceme.save_pruned(result, tmp_path / "pruned")
    assert (out / "model.safetensors").exists() and (out / "pruning.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_hidden_layers == 6 - layers
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS, use_cache=False).logits, logits, rtol=0, atol=0)

    if arch != "llama":  # determinism is a property of the method; once per method is enough
        return
    again = run(copy.deepcopy(base), method, layers, tokenizer, calib_path).model
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs between two runs with the same seed"
