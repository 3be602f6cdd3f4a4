"""Surgery on every architecture: config, layer_idx, cache, save/reload, ties."""

from __future__ import annotations

import pytest
import torch
from tiny import ARCHS, arch_params, tiny_config, tiny_model
from transformers import AutoModelForCausalLM

from replaceme.registry import adapter_for
from replaceme.surgery import remove_layers

IDS = torch.tensor([[1, 5, 9, 14, 3, 22, 7, 8, 30, 2], [1, 40, 41, 42, 43, 44, 45, 46, 47, 48]])


def identity_hooks(model, adapter, removed):
    """Make the removed layers of the *unpruned* model pass their input through."""

    def hook(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    layers = adapter.layers(model)
    return [layers[i].register_forward_hook(hook, with_kwargs=True) for i in removed]


@pytest.mark.parametrize("arch", arch_params(ARCHS))
def test_remove_layers_matches_skipping_them(arch, tmp_path):
    model = tiny_model(arch)
    adapter = adapter_for(model)
    removed = [1, 3]
    handles = identity_hooks(model, adapter, removed)
    with torch.no_grad():
        expected = model(IDS, use_cache=False).logits
    for h in handles:
        h.remove()

    remove_layers(model, adapter, removed)
    assert adapter.num_layers(model) == 4
    assert model.config.num_hidden_layers == 4
    for j, layer in enumerate(adapter.layers(model)):
        idx = {m.layer_idx for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)}
        assert idx == {j}
    with torch.no_grad():
        got = model(IDS, use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # the KV cache indexes layers by layer_idx: cached and uncached greedy decoding agree
    with torch.no_grad():
        cached = model.generate(IDS[:1, :4], max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = model.generate(IDS[:1, :4], max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)

    model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert reloaded.config.num_hidden_layers == 4
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS, use_cache=False).logits, got, rtol=0, atol=0)


def test_per_layer_config_lists_are_sliced():
    from transformers import AutoModelForCausalLM

    config = tiny_config("qwen3")
    config.layer_types = ["full_attention", "sliding_attention"] * 3
    config.use_sliding_window = True
    config.sliding_window = 4
    model = AutoModelForCausalLM.from_config(config).eval()
    adapter = adapter_for(model)
    remove_layers(model, adapter, [0, 1, 2])
    assert model.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    with torch.no_grad():
        out = model.generate(IDS[:1, :4], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 8)


def test_tied_embeddings_stay_tied(tmp_path):
    model = tiny_model("llama")
    assert model.config.tie_word_embeddings
    remove_layers(model, adapter_for(model), [2])
    model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(reloaded.lm_head.weight, model.model.embed_tokens.weight)


def test_out_of_range_layers_rejected():
    model = tiny_model("llama")
    with pytest.raises(ValueError):
        remove_layers(model, adapter_for(model), [6])
