"""LLM-Streamline end to end: recipe and statistics request, surgery, KV-cache
generation, save/reload, the FFN variant, other architectures, and the real
stories260K model (skipped when ../shared is absent)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import replaceme
from replaceme.registry import adapter_for
from replaceme.plan import Block
from replaceme_streamline.components import TrainedLayerCompensator, pairs_for
from replaceme_streamline.replacement import build_replacement, copy_layer

DIAGNOSTICS = {"train_loss_first", "train_loss_last", "val_mse_init", "val_mse_best", "val_mse_removal",
               "train_tokens", "val_tokens", "seconds", "epochs", "steps", "replacement", "saved_as"}


def _states(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_cache_consistent(model, vocab: int = 128) -> None:
    """Logits of the last token: full forward == prefix with KV cache, then one step."""
    ids = torch.randint(3, vocab, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits[:, -1]
        prefix = model(input_ids=ids[:, :-1], use_cache=True)
        step = model(input_ids=ids[:, -1:], past_key_values=prefix.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)


def _assert_reloads_identically(result, path) -> dict:
    replaceme.save_pruned(result, path)
    reloaded = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, result.model(input_ids=ids).logits)
    assert reloaded.config.num_hidden_layers == result.outcome.layers_after
    return json.loads((path / "pruning.json").read_text())


def test_recipe_and_statistics_request():
    from replaceme.methods import resolve_method

    resolved = resolve_method("llm-streamline", {"token_budget": 1000})
    assert (resolved.selector.name, resolved.compensator.name, resolved.merger.name) == (
        "mean-token-cosine", "trained-layer", "write-layer")
    assert resolved.method.reference == "Chen et al., ICLR 2025, arXiv 2403.19135"
    assert TrainedLayerCompensator.capabilities()["layers_added_per_block"] == 1
    request = resolved.stats_request(num_layers=6, layers=2)  # windows of 3 layers starting at 1..3
    assert request.sample_tokens == 1000
    assert request.sample_boundaries == {1, 2, 3, 4, 5, 6}
    assert request.layer_kwargs == {1, 2, 3}


def test_trained_layer_is_written_into_the_window_start(tiny_lm, prune_tiny):
    model = tiny_lm()
    old_layers = list(model.model.layers)
    before = [_states(layer) for layer in old_layers]
    result = prune_tiny(model)
    (block,) = result.plan.blocks
    (comp,) = result.outcome.compensations
    assert block.size == 2 and comp.kind == "layer" and DIAGNOSTICS <= set(comp.diagnostics)
    layers = result.model.model.layers
    assert len(layers) == 3 and result.model.config.num_hidden_layers == 3
    assert layers[block.start] is comp.module and all(comp.module is not old for old in old_layers)
    kept_old = [i for i in range(4) if i not in (block.start + 1,)]
    for new, old in enumerate(kept_old):
        if old != block.start:
            assert layers[new] is old_layers[old]
        assert layers[new].self_attn.layer_idx == new
    # the unpruned layers, the window's first one included, were never touched
    for layer, state in zip(old_layers, before):
        for key, value in layer.state_dict().items():
            assert torch.equal(value, state[key])
    assert any(not torch.equal(v, before[block.start][k]) for k, v in comp.module.state_dict().items())


def test_generate_with_kv_cache_after_pruning(tiny_lm, prune_tiny):
    model = prune_tiny(tiny_lm()).model
    _assert_cache_consistent(model)
    ids = torch.tensor([[1, 5, 6, 7]])
    out = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    assert out.shape == (1, 10)
    assert torch.equal(out, model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0))


@pytest.mark.parametrize("replacement", ["layer", "ffn"])
def test_save_then_from_pretrained_gives_identical_logits(tiny_lm, prune_tiny, tmp_path, replacement):
    result = prune_tiny(tiny_lm(), replacement=replacement)
    meta = _assert_reloads_identically(result, tmp_path / "out")
    (comp,) = meta["compensations"]
    assert comp["kind"] == "layer" and comp["diagnostics"]["replacement"] == replacement
    assert "standard decoder layer" in comp["diagnostics"]["saved_as"]


def test_training_lowers_loss_and_beats_init_and_plain_removal(tiny_lm, prune_tiny):
    result = prune_tiny(tiny_lm(), epochs=4, lr=2e-3)
    d = result.outcome.compensations[0].diagnostics
    assert d["validation"] == "holdout" and d["improved"]
    assert d["train_loss_last"] < d["train_loss_first"]
    assert d["val_mse_best"] < d["val_mse_init"] and d["val_mse_best"] < d["val_mse_removal"]


def test_pruning_is_deterministic_under_a_seed(tiny_lm, prune_tiny):
    a = prune_tiny(tiny_lm(), epochs=2).model.state_dict()
    b = prune_tiny(tiny_lm(), epochs=2, use_cache=False).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ffn_variant_computes_x_plus_mlp_of_norm(tiny_lm, prune_tiny):
    result = prune_tiny(tiny_lm(), replacement="ffn")
    layer = result.model.model.layers[result.plan.blocks[0].start]
    assert all(torch.count_nonzero(p) == 0 for p in layer.self_attn.parameters())
    x = torch.randn(2, 7, 32)
    rotary = result.model.model.rotary_emb(x, torch.arange(7)[None])
    with torch.no_grad():
        out = layer(x, position_embeddings=rotary)
        torch.testing.assert_close(out, x + layer.mlp(layer.post_attention_layernorm(x)))
    _assert_cache_consistent(result.model)


def test_bfloat16_model_trains_in_float32_and_keeps_its_dtype(tiny_lm, prune_tiny):
    result = prune_tiny(tiny_lm().to(torch.bfloat16))
    layer = result.model.model.layers[result.plan.blocks[0].start]
    assert {p.dtype for p in layer.parameters()} == {torch.bfloat16}
    assert torch.isfinite(torch.tensor(result.outcome.compensations[0].diagnostics["val_mse_best"]))


def test_two_windows(tiny_lm, prune_tiny):
    """num_blocks=2 with --layers 2: two windows of 2 layers, each replaced by one layer."""
    result = prune_tiny(tiny_lm(layers=6), layers=2, num_blocks=2)
    assert [b.size for b in result.plan.blocks] == [2, 2] and len(result.model.model.layers) == 4
    for b, comp in zip(result.plan.blocks, result.outcome.compensations):
        new_index = b.start - sum(1 for other in result.plan.blocks if other.end <= b.start)
        assert result.model.model.layers[new_index] is comp.module
    _assert_cache_consistent(result.model)


@pytest.mark.parametrize("arch", ["gpt2", "opt", "gpt_neox", "falcon"])
def test_replay_and_ffn_variant_on_other_architectures(arch, tiny_lm, prune_tiny, tokenizer, calib_file, tmp_path):
    """Layer s replayed on the sample's x_s with its stored call arguments gives x_{s+1}
    (non-pad tokens), and the FFN variant prunes, reloads and decodes with a cache."""
    from replaceme.calibration import CalibrationSpec, build_calibration
    from replaceme.stats.collect import collect_stats
    from replaceme_streamline.train import evaluate_mse

    model = tiny_lm(arch)
    adapter = adapter_for(model)
    calib = build_calibration(CalibrationSpec(str(calib_file), samples=8, max_length=32, batch_size=4), tokenizer)
    block = Block(1, 2)
    stats = collect_stats(model, adapter, calib, TrainedLayerCompensator().stats_request([block]))
    pairs = pairs_for(stats.sample.train, block)
    replay = evaluate_mse(copy_layer(model, adapter, 1).float(), pairs, torch.device("cpu"))
    assert replay < 1e-10 * max(1.0, float(pairs[0].y.pow(2).mean()))
    assert build_replacement(model, adapter, 1, "ffn") is not None
    result = prune_tiny(model, replacement="ffn")
    _assert_reloads_identically(result, tmp_path / "out")
    _assert_cache_consistent(result.model)


@pytest.mark.slow
def test_stories260k(shared, tmp_path):
    """The real model: 5 -> 4 layers; training helps on held-out data; plain from_pretrained loads it."""
    from replaceme.calibration import CalibrationSpec

    spec = CalibrationSpec(f"{shared}/data/tinystories/valid.txt[:2000]", samples=96, max_length=128, batch_size=4)
    result = replaceme.prune(str(shared / "models" / "stories260K"), method="llm-streamline", layers=1,
                             calibration=spec, device="cpu")
    d = result.outcome.compensations[0].diagnostics
    assert d["train_loss_last"] < d["train_loss_first"]
    assert d["val_mse_best"] < d["val_mse_init"] < d["val_mse_removal"]
    replaceme.save_pruned(result, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.config.num_hidden_layers == 4 and len(reloaded.model.layers) == 4
