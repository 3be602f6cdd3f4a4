"""Test helpers shared by every test module: tiny random models of each supported
architecture, a character-level tokenizer built offline, calibration text, and the
location of the real model and data in ../shared."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """``$REPLACEME_SHARED`` or ``<repo>/../shared``, if it exists."""
    path = Path(os.environ.get("REPLACEME_SHARED", ROOT.parent / "shared"))
    return path if path.is_dir() else None


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


ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2", "opt", "gpt_neox", "falcon"]


def tiny_model(arch: str, seed: int = 0, layers: int = L):
    """A randomly initialised tiny causal LM in eval mode, with biases perturbed so folds are tested."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, layers))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
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


