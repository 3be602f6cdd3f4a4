"""Fixtures for the evaluation tests: tiny offline models, the shared folder, task data."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def find_shared() -> Path | None:
    """``$REPLACEME_SHARED`` or ``<repo>/../shared``, when it exists."""
    env = os.environ.get("REPLACEME_SHARED")
    path = Path(env) if env else REPO.parent / "shared"
    return path if path.is_dir() else None


@pytest.fixture(autouse=True)
def _evaluation_env(monkeypatch):
    """One torch thread (these models are tiny; on few shared cores more threads are ~10x
    slower), no progress bars, and no task data from the environment."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("REPLACEME_NO_PROGRESS", "1")
    monkeypatch.delenv("REPLACEME_TASK_DATA", raising=False)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared() -> Path:
    path = find_shared()
    if path is None:
        pytest.skip("shared folder absent (set REPLACEME_SHARED or provide <repo>/../shared)")
    return path


@pytest.fixture(scope="session")
def shared_data(shared) -> Path:
    path = shared / "data"
    if not path.is_dir():
        pytest.skip(f"no data folder in {shared}")
    return path


@pytest.fixture(scope="session")
def stories(shared):
    """The real pretrained stories260K (Llama, 5 layers, vocab 512) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = shared / "models" / "stories260K"
    if not path.is_dir():
        pytest.skip(f"{path} absent")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def char_tokenizer():
    """A character-level fast tokenizer with BOS (``<s>``, added by default) and EOS, no pad."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for char in string.printable:
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def make_tiny_llama(vocab_size: int, seed: int = 0, max_positions: int = 192):
    """A random 2-layer Llama (GQA) with peaked outputs (large init), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2,
        initializer_range=0.2, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_llama_factory():
    return make_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama(char_tokenizer):
    return make_tiny_llama(len(char_tokenizer))


# ----------------------------------------------------------------------------- synthetic task data

_WORDS = ("red fox cat sun tree blue river stone green moon bird cold warm light dark fast slow "
          "the a of in on under over big small").split()


def _sentence(rng, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


@pytest.fixture(scope="session")
def synthetic_task_data(tmp_path_factory) -> Path:
    """A task data directory in the shared formats, with a few short random items per task."""
    import random

    rng = random.Random(7)
    root = tmp_path_factory.mktemp("task_data")
    n = 6

    def write_jsonl(relative: str, rows: list[dict]) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    write_jsonl("boolq/dev.jsonl", [
        {"question": _sentence(rng, 4), "title": "t", "answer": bool(i % 2), "passage": _sentence(rng, 12)}
        for i in range(n)
    ])
    write_jsonl("piqa/valid.jsonl", [
        {"goal": _sentence(rng, 5), "sol1": _sentence(rng, 3), "sol2": _sentence(rng, 4)} for _ in range(n)
    ])
    (root / "piqa/valid-labels.lst").write_text("".join(f"{i % 2}\n" for i in range(n)))
    lines = []
    for i in range(n):
        lines += [f"Topic {i}: {_sentence(rng, 6)}", str(i % 4)] + [_sentence(rng, rng.randint(2, 5)) for _ in range(4)]
    (root / "hellaswag").mkdir()
    (root / "hellaswag/hellaswag_val_full.txt").write_text("\n".join(lines) + "\n")
    for name in ("ARC-Easy", "ARC-Challenge", "openbookqa", "sciq"):
        write_jsonl(f"mc/{name}.mc.jsonl", [
            {"query": _sentence(rng, 6), "choices": [_sentence(rng, rng.randint(1, 3)) for _ in range(4)],
             "gold": i % 4}
            for i in range(n)
        ])
    write_jsonl("mc/winogrande.mc.jsonl", [
        {"query": f"{_sentence(rng, 3)} _ {_sentence(rng, 4)}.", "choices": [rng.choice(_WORDS), rng.choice(_WORDS)],
         "gold": i % 2}
        for i in range(n)
    ])
    write_jsonl("lambada/lambada_test.jsonl", [{"text": _sentence(rng, 10)} for _ in range(n)])
    return root
