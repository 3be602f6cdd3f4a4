"""Helpers for testing replaceme plugins, public so that plugin authors can call
them from their own pytest suites (``tests/fake_plugin`` does, in CI).

- :func:`tiny_model` / :func:`tiny_config`: small random models of every
  architecture replaceme supports (:data:`ARCHS`), built offline from configs;
- :func:`make_tokenizer`: a character-level tokenizer built on the fly;
- :func:`calibration_text`: a file of pseudo-sentences to calibrate on;
- :func:`check_method_contract`: the contract every registered method keeps
  (replaceme's own suite runs it for every method on every architecture);
- :func:`temporary_plugin`: register a throwaway plugin for the duration of a
  ``with`` block (or a fixture), then unregister it.

Example, in a plugin's test file::

    import pytest
    from replaceme.testing import ARCHS, check_method_contract

    @pytest.mark.parametrize("arch", ["llama", "gpt2"])
    def test_my_method_keeps_the_contract(arch, tmp_path):
        check_method_contract("my-method", arch, tmp_path=tmp_path)

This module imports torch and transformers: import it from tests only.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from replaceme.hookspecs import hookimpl

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?'\n"


def make_tokenizer():
    """A character-level fast tokenizer with <pad>/<s>/</s>/<unk>; BOS is prepended."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    from tokenizers import decoders

    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


class _Contributions:
    """A plugin object that registers the given classes and recipes."""

    def __init__(self, **items: Iterable[Any]):
        self.items = {kind: list(values) for kind, values in items.items()}

    def _register(self, kind: str, register: Any) -> None:
        for item in self.items[kind]:
            register(item)

    @hookimpl
    def register_selectors(self, register):
        self._register("selectors", register)

    @hookimpl
    def register_compensators(self, register):
        self._register("compensators", register)

    @hookimpl
    def register_mergers(self, register):
        self._register("mergers", register)

    @hookimpl
    def register_methods(self, register):
        self._register("methods", register)


@contextlib.contextmanager
def temporary_plugin(name: str, plugin: Any = None, *, selectors: Iterable[type] = (),
                     compensators: Iterable[type] = (), mergers: Iterable[type] = (),
                     methods: Iterable[Any] = ()) -> Iterator[None]:
    """Register an in-process plugin named ``name`` inside a ``with`` block, and
    unregister it on the way out (even when the block raises).

    Either give ``plugin`` (a module or object with ``@hookimpl`` functions) or the
    components to register: ``selectors``/``compensators``/``mergers`` (classes)
    and ``methods`` (:class:`~replaceme.components.Method` recipes). The registry
    is rebuilt on its next use (``registry()``), so a broken plugin is skipped with
    its warning exactly as an installed one is::

        with temporary_plugin("mine", selectors=[MySelector], methods=[Method("mine", "my-sel", "none")]):
            check_method_contract("mine", "llama", tmp_path=tmp_path)
    """
    from replaceme.registry import register_plugin, unregister_plugin

    if plugin is None:
        plugin = _Contributions(selectors=selectors, compensators=compensators, mergers=mergers, methods=methods)
    elif any((selectors, compensators, mergers, methods)):
        raise TypeError("give either a plugin object or the components to register, not both")
    register_plugin(plugin, name)
    try:
        yield
    finally:
        unregister_plugin(name)


VOCAB = 128
H, FF, L = 32, 64, 6


def tiny_config(arch: str, layers: int = L):
    """A small config (hidden 32, ``layers`` layers, vocab 128) for each supported architecture."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    llama_like = dict(hidden_size=H, intermediate_size=FF, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, **common)
    if arch == "llama":
        return tf.LlamaConfig(**llama_like, tie_word_embeddings=True)
    if arch == "mistral":
        return tf.MistralConfig(**llama_like, sliding_window=None)
    if arch == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if arch == "qwen3":
        return tf.Qwen3Config(**llama_like, head_dim=8)
    if arch == "gemma":
        return tf.GemmaConfig(**llama_like, head_dim=8)
    if arch == "phi3":
        return tf.Phi3Config(**llama_like)
    if arch == "gemma2":
        return tf.Gemma2Config(**llama_like, head_dim=8, query_pre_attn_scalar=8, sliding_window=16)
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(**llama_like, head_dim=8, query_pre_attn_scalar=8, sliding_window=16)
    if arch == "olmo2":
        return tf.Olmo2Config(**llama_like)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=H, n_layer=layers, n_head=4, n_positions=256, **common)
    if arch == "opt":
        return tf.OPTConfig(hidden_size=H, ffn_dim=FF, num_hidden_layers=layers, num_attention_heads=4,
                            max_position_embeddings=256, word_embed_proj_dim=H, **common)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=H, intermediate_size=FF, num_hidden_layers=layers, num_attention_heads=4,
                                max_position_embeddings=256, **common)
    if arch == "falcon":
        return tf.FalconConfig(hidden_size=H, num_hidden_layers=layers, num_attention_heads=4, new_decoder_architecture=False,
                               multi_query=True, parallel_attn=True, bias=True, **common)
    raise KeyError(arch)


#: architectures whose MLP adds its output to the residual stream directly
DIRECT_ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2", "opt", "gpt_neox", "falcon"]
#: architectures whose MLP output passes a post-norm before the residual add
POST_NORM_ARCHS = ["gemma2", "gemma3_text", "olmo2"]
ARCHS = DIRECT_ARCHS + POST_NORM_ARCHS


def tiny_model(arch: str, seed: int = 0, layers: int = L):
    """A randomly initialised tiny causal LM in eval mode, with biases perturbed so folds are tested."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, layers))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
            elif "norm" in name and name.endswith("weight"):  # norms not at their init, so folds into them are tested
                p.add_(torch.empty_like(p).uniform_(-0.3, 0.3))
    return model.eval()


def calibration_text(path: Path, records: int = 60, seed: int = 0) -> Path:
    """Write blank-line separated pseudo-sentences to ``path``."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "Lily", "saw", "big", "red", "ball"]
    text = "\n\n".join(
        " ".join(rng.choice(words) for _ in range(rng.randint(5, 40))).capitalize() + "." for _ in range(records)
    )
    path.write_text(text + "\n", encoding="utf-8")
    return path




#: token ids the contract feeds the models (inside every tiny vocabulary)
CONTRACT_IDS = [[1, 5, 9, 14, 3, 22, 7, 8, 30, 2]]


def check_method_contract(
    method: str,
    arch: str = "llama",
    *,
    tmp_path: Path,
    layers: int = 2,
    options: dict[str, Any] | None = None,
    check_determinism: bool = True,
) -> Any:
    """Prune a tiny ``arch`` model with ``method`` and assert the contract:

    - the model has exactly ``layers`` fewer decoder layers, and its config says so;
    - every block of the plan lies inside the model;
    - logits keep their shape and are finite;
    - greedy generation with the KV cache equals generation without it;
    - ``save_pruned`` → ``from_pretrained`` gives the same parameters count and
      bit-identical logits (a standard model, no custom code);
    - with ``check_determinism``, a second run with the same seed gives identical weights.

    Args:
        method: a registered method name.
        arch: one of :data:`ARCHS`.
        tmp_path: a scratch directory (pytest's ``tmp_path``).
        layers: net layers to remove (the tiny models have 6).
        options: method options (keep them small, e.g. few training steps).

    Returns:
        The :class:`replaceme.api.PruneResult` of the first run.

    Raises:
        AssertionError: naming the broken clause.
        ReplacemeError: when the method refuses this architecture.
    """
    from transformers import AutoModelForCausalLM

    import replaceme
    from replaceme.calibration import CalibrationSpec

    ids = torch.tensor(CONTRACT_IDS)
    tokenizer = make_tokenizer()
    calib = calibration_text(Path(tmp_path) / "contract-calib.txt", records=24)
    spec = CalibrationSpec(str(calib), samples=12, max_length=48, batch_size=4, seed=0)

    def run(model: Any) -> Any:
        return replaceme.prune(model, method=method, layers=layers, calibration=spec, tokenizer=tokenizer, seed=0,
                               options=options or {}, use_cache=False)

    base = tiny_model(arch)
    num_layers = base.config.num_hidden_layers
    with torch.no_grad():
        logits_before = base(ids, use_cache=False).logits
    result = run(copy.deepcopy(base))
    model = result.model
    assert model.config.num_hidden_layers == num_layers - layers, "config.num_hidden_layers not updated"
    assert result.outcome.layers_after == num_layers - layers, "wrong number of layers removed"
    assert all(0 <= b.start < b.end <= num_layers for b in result.plan.blocks), f"plan outside the model: {result.plan}"
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
        assert logits.shape == logits_before.shape, "logits changed shape"
        assert torch.isfinite(logits).all(), "non-finite logits"
        prompt = ids[:, :4]
        cached = model.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = model.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached), "generation with the KV cache differs from generation without it"

    out = replaceme.save_pruned(result, Path(tmp_path) / "contract-pruned")
    assert (out / "model.safetensors").exists() and (out / "pruning.json").exists(), "missing saved files"
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_hidden_layers == num_layers - layers, "reloaded config has the wrong layer count"
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.parameters()), \
        "reloaded model has a different parameter count"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, use_cache=False).logits, logits, rtol=0, atol=0)

    if check_determinism:
        again = run(copy.deepcopy(base)).model
        for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
            assert torch.equal(a, b), f"{name} differs between two runs with the same seed"
    return result
