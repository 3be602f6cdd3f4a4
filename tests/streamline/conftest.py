"""Fixtures of the LLM-Streamline tests: one thread, tiny seeded models, and a
pruning helper (the ``tokenizer`` and ``calib_file`` fixtures come from
``tests/conftest.py``, as does the per-test statistics cache)."""

from __future__ import annotations

import pytest
import torch

COMMON = dict(vocab_size=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def tiny_config(arch: str, layers: int = 4):
    """``layers`` layers (default 4), hidden 32: Llama (the brief's shape) and one of each other family."""
    import transformers as tf

    if arch == "llama":
        return tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                              num_key_value_heads=2, tie_word_embeddings=True, **COMMON)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=layers, n_head=4, n_positions=128, **COMMON)
    if arch == "opt":
        return tf.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=layers, num_attention_heads=4,
                            max_position_embeddings=128, word_embed_proj_dim=32, **COMMON)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                max_position_embeddings=128, **COMMON)
    if arch == "falcon":
        return tf.FalconConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, new_decoder_architecture=False,
                               multi_query=True, parallel_attn=True, bias=True, **COMMON)
    raise KeyError(arch)


def _tiny_lm(arch: str = "llama", seed: int = 0, layers: int = 4):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, layers)).eval()


@pytest.fixture
def tiny_lm():
    """``tiny_lm(arch="llama", seed=0, layers=4)``: a seeded random tiny causal LM in eval mode."""
    return _tiny_lm


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is faster, and far faster on a shared, busy machine
    (two OpenMP threads contending for cores made training 25x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def prune_tiny(tokenizer, calib_file):
    """``prune_tiny(model, **options)``: llm-streamline with ``--layers 1`` on 40 short records
    (10 batches of 4, one held out)."""
    import replaceme
    from replaceme.calibration import CalibrationSpec

    spec = CalibrationSpec(str(calib_file), samples=40, max_length=48, batch_size=4)

    def run(model, layers: int = 1, **options):
        return replaceme.prune(model, method="llm-streamline", layers=layers, calibration=spec, tokenizer=tokenizer, **options)

    return run
