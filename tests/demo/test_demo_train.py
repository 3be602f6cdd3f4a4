"""The demo training loop: schedule, packing, time budget."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from replaceme.demo import corpus  # noqa: E402
from replaceme.demo.tokenizer import build_tokenizer  # noqa: E402
from replaceme.demo.train import Recipe, lr_factor, pack, perplexity, train  # noqa: E402

TINY = Recipe(
    layers=2, hidden=32, heads=2, kv_heads=1, intermediate=64, seq_len=64,
    train_docs=24, calibration_docs=6, validation_docs=6, steps=30, batch_size=4, warmup_steps=4,
)  # fmt: skip


def test_schedule():
    r = Recipe()
    lrs = [lr_factor(s, r) for s in range(r.steps)]
    assert lrs[0] < lrs[r.warmup_steps - 1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[r.warmup_steps :], lrs[r.warmup_steps + 1 :]))
    assert lrs[-1] == pytest.approx(r.min_lr_ratio, abs=0.01)
    # a shortened run still decays fully
    assert lr_factor(99, r, total_steps=100) == pytest.approx(r.min_lr_ratio, abs=0.01)


def test_pack():
    tok = build_tokenizer()
    docs = corpus.generate("train", 10)
    data = pack(tok, docs, 64)
    n_tokens = sum(len(d.split()) + 2 for d in docs)  # <bos> doc <eos>
    assert data.shape == (n_tokens // 64, 64)
    assert data[0, 0].item() == tok.bos_token_id
    assert (data == tok.eos_token_id).sum() >= len(docs) - 1
    with pytest.raises(ValueError, match="too small"):
        pack(tok, ["alice runs ."], 64)


def test_train_learns_and_restores_threads(monkeypatch):
    monkeypatch.setenv("REPLACEME_NO_PROGRESS", "1")
    tok = build_tokenizer(model_max_length=TINY.seq_len)
    splits = corpus.generate_splits({"train": TINY.train_docs, "validation": TINY.validation_docs})
    threads = torch.get_num_threads()
    model, summary = train(TINY, tok, splits["train"], splits["validation"])
    assert torch.get_num_threads() == threads
    assert not model.training
    assert summary["steps"] == summary["planned_steps"] == TINY.steps
    # far better than uniform over the vocabulary after a few steps
    assert summary["validation_ppl"] < len(tok) / 2
    assert perplexity(model, tok, splits["validation"]) == pytest.approx(summary["validation_ppl"])
    assert math.isfinite(summary["train_loss"])


def test_time_budget_shortens_training(monkeypatch, caplog):
    monkeypatch.setenv("REPLACEME_NO_PROGRESS", "1")
    tok = build_tokenizer(model_max_length=TINY.seq_len)
    docs = corpus.generate("train", TINY.train_docs)
    model, summary = train(TINY.replace(time_budget_s=1e-6), tok, docs)
    assert 1 <= summary["steps"] < TINY.steps
    assert "validation_ppl" not in summary
