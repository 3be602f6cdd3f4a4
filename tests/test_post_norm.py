"""Post-norm architectures (Gemma 2, Gemma 3 text, OLMo 2): the MLP output passes
``post_feedforward_layernorm`` before the residual add, so

- a dense ReplaceMe map cannot be folded: refused before any work, in one line;
- a diagonal map folds exactly into the norm's weight: the pruned model's logits
  equal the unpruned model with the block removed and ``diag(d)`` applied at run
  time to what layer ``s-1``'s MLP adds to the stream (a hook after the norm);
- the statistics read the residual contribution (after the norm), not ``down_proj``;
- a Llama-like model with norms the adapters do not know is refused.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import POST_NORM_ARCHS, calibration_text, tiny_model

import replaceme
from replaceme.calibration import CalibrationSpec, build_calibration
from replaceme.errors import ReplacemeError
from replaceme.registry import adapter_for
from replaceme.stats.collect import collect_stats
from replaceme.stats.request import StatsRequest
from replaceme.surgery import fold_linear_map, remove_layers

IDS = torch.tensor([[1, 5, 9, 14, 3, 22, 7, 8, 30, 2, 11, 40]])


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = calibration_text(tmp_path_factory.mktemp("calib") / "calib.txt", records=24)
    return CalibrationSpec(str(path), samples=12, max_length=48, batch_size=4, seed=0)


@pytest.mark.parametrize("arch", POST_NORM_ARCHS)
@pytest.mark.parametrize("method", ["replaceme-lstsq", "replaceme-cosine"])
def test_dense_fold_is_refused_in_one_line_before_any_work(arch, method, tokenizer, tmp_path):
    missing = tmp_path / "no-such-calibration.txt"  # reading it would be the first piece of work
    with pytest.raises(ReplacemeError, match="post-norm 'post_feedforward_layernorm'") as err:
        replaceme.prune(tiny_model(arch), method=method, layers=2, calibration=str(missing), tokenizer=tokenizer)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch", POST_NORM_ARCHS)
def test_diagonal_map_folds_exactly_after_the_norm(arch, tokenizer, spec, tmp_path):
    base = tiny_model(arch)
    result = replaceme.prune(copy.deepcopy(base), method="replaceme-lstsq", layers=2, calibration=spec,
                             tokenizer=tokenizer, options={"diag": True})
    (comp,) = result.outcome.compensations
    s, e = comp.block.start, comp.block.end
    d = torch.diagonal(comp.transform)
    assert comp.diagonal and torch.equal(comp.transform, torch.diag(d))
    assert not torch.allclose(d, torch.ones_like(d), atol=1e-3)  # a real map, not the identity

    reference = copy.deepcopy(base)  # unpruned weights, block removed, diag(d) applied at run time
    adapter = adapter_for(reference)
    norm = adapter.mlp_residual(reference, s - 1)
    norm.register_forward_hook(lambda mod, args, out: out * d.to(out.dtype))
    remove_layers(reference, adapter, range(s, e))
    with torch.no_grad():
        expected = reference(IDS, use_cache=False).logits
        folded = result.model(IDS, use_cache=False).logits
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(replaceme.save_pruned(result, tmp_path / "out")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS, use_cache=False).logits, folded, rtol=0, atol=0)

    # folding the same d into down_proj instead is undone by the norm: not the same model
    wrong = copy.deepcopy(base)
    wrong_adapter = adapter_for(wrong)
    proj = wrong_adapter.mlp_out(wrong, s - 1)
    with torch.no_grad():
        proj.weight.mul_(d.to(proj.weight.dtype)[:, None])
    remove_layers(wrong, wrong_adapter, range(s, e))
    with torch.no_grad():
        assert not torch.allclose(wrong(IDS, use_cache=False).logits, expected, atol=1e-4)


@pytest.mark.parametrize("arch", ["gemma2", "olmo2"])
def test_norm_weight_formula(arch):
    """Gemma scales by (1 + w): w' = d(1 + w) − 1; OLMo by w: w' = d·w."""
    model = tiny_model(arch)
    adapter = adapter_for(model)
    norm = adapter.mlp_residual(model, 1)
    w = norm.weight.detach().clone().to(torch.float64)
    d = torch.linspace(0.5, 1.5, w.numel(), dtype=torch.float64)
    fold_linear_map(model, adapter, 1, torch.diag(d))
    expected = d * (1 + w) - 1 if arch == "gemma2" else d * w
    torch.testing.assert_close(norm.weight.detach().to(torch.float64), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ReplacemeError, match="dense linear map"):
        fold_linear_map(model, adapter, 1, torch.diag(d) + 1e-3)


@pytest.mark.parametrize("arch", POST_NORM_ARCHS)
def test_gram_statistics_read_the_residual_contribution(arch, tokenizer, spec):
    model = tiny_model(arch)
    adapter = adapter_for(model)
    calib = build_calibration(spec, tokenizer)
    stats = collect_stats(model, adapter, calib, StatsRequest(gram_blocks={(2, 3)}), holdout_tokens=0)
    seen = []
    handle = model.model.layers[1].post_feedforward_layernorm.register_forward_hook(lambda m, a, out: seen.append(out))
    xtx = torch.zeros(model.config.hidden_size, model.config.hidden_size, dtype=torch.float64)
    with torch.no_grad():
        for ids, mask in zip(calib.input_ids, calib.masks):
            model(input_ids=ids, attention_mask=mask.long(), use_cache=False)
            r = seen.pop()[mask].to(torch.float64)
            xtx += r.T @ r
    handle.remove()
    torch.testing.assert_close(stats.gram[next(iter(stats.gram))].xtx, xtx, rtol=1e-9, atol=1e-9)


def test_llama_with_unknown_norms_is_refused_not_guessed():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    model = tiny_model("llama")
    for layer in model.model.layers:
        layer.post_feedforward_layernorm = LlamaRMSNorm(model.config.hidden_size)
    with pytest.raises(ReplacemeError, match="post_feedforward_layernorm.*refused") as err:
        adapter_for(model)
    assert "\n" not in str(err.value)
    model.config.model_type = "my-llama-variant"  # the Llama-like fallback refuses too
    with pytest.raises(ReplacemeError, match="refused"):
        adapter_for(model)
