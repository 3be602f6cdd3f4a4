"""Sliding-window perplexity against a plain reference, pad masking, errors."""

from __future__ import annotations

import math

import pytest
import torch

from replaceme.errors import ReplacemeError
from replaceme.evaluation.perplexity import (
    batch_nll,
    batch_windows,
    perplexity,
    plan_windows,
    tokenize_corpus,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A small model reads a short story about a cat and a hat.",
    "Numbers 12345 and symbols #@! are text too.",
] * 3


def reference_nll(model, ids: list[int], bos: int | None, context_length: int, stride: int) -> tuple[float, int]:
    """The Hugging Face perplexity-guide loop, one window at a time, with the model's own loss.

    Each window holds ``context_length`` tokens (BOS first when given) and
    labels only the tokens after the previous window's end.
    """
    window = context_length - (bos is not None)
    total, count, prev_end = 0.0, 0, 0
    for start in range(0, len(ids), stride):
        end = min(start + window, len(ids))
        chunk = ([bos] if bos is not None else []) + ids[start:end]
        labels = list(chunk)
        offset = bos is not None
        first_label = max(prev_end - start + offset, 1)  # position 0 has no prediction
        labels[:first_label] = [-100] * first_label
        n = sum(1 for x in labels[1:] if x != -100)
        if n:
            with torch.no_grad():
                loss = model(input_ids=torch.tensor([chunk]), labels=torch.tensor([labels])).loss
            total += float(loss) * n
            count += n
        prev_end = end
        if end == len(ids):
            break
    return total, count


@pytest.mark.parametrize("n_tokens", [1, 5, 17, 64])
@pytest.mark.parametrize("window,stride", [(8, 8), (8, 3), (8, 1), (5, 4)])
@pytest.mark.parametrize("first_scored", [0, 1])
def test_windows_score_every_token_once(n_tokens, window, stride, first_scored):
    windows = plan_windows(n_tokens, window, stride, first_scored)
    scored = sorted(i for w in windows for i in range(w.score_from, w.end))
    assert len(scored) == len(set(scored))
    if first_scored == 0:  # a BOS in front: every token is scored
        assert scored == list(range(n_tokens))
    elif stride < window:  # overlapping windows: all but the very first token
        assert scored == list(range(1, n_tokens))
    else:  # non-overlapping without BOS: each window's first token is context only
        assert scored == sorted(set(range(n_tokens)) - set(range(0, n_tokens, window)))
    for w in windows:
        assert 0 <= w.start <= w.score_from < w.end <= n_tokens
        assert w.end - w.start <= window
        assert w.score_from >= w.start + first_scored


@pytest.mark.parametrize("context_length,stride,add_bos",
                         [(32, None, None), (32, 10, None), (24, None, False), (24, 7, False)])
def test_matches_reference_loop_on_tiny_llama(tiny_llama, char_tokenizer, context_length, stride, add_bos):
    result = perplexity(tiny_llama, char_tokenizer, TEXTS, context_length=context_length, stride=stride,
                        batch_size=3, add_bos=add_bos)
    ids = char_tokenizer("\n\n".join(TEXTS), add_special_tokens=False)["input_ids"]
    bos = char_tokenizer.bos_token_id if add_bos is None else None
    window = context_length - (bos is not None)
    total, count = reference_nll(tiny_llama, ids, bos, context_length, stride or window)
    assert result.tokens == count
    assert result.nll == pytest.approx(total / count, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(total / count), rel=1e-5)
    if bos is not None:
        assert result.tokens == len(ids)  # with BOS every token is scored


def test_batched_equals_one_by_one(tiny_llama, char_tokenizer):
    """The last, shorter window is padded in a batch; pads must not change anything."""
    kwargs = dict(context_length=40, stride=25)
    one = perplexity(tiny_llama, char_tokenizer, TEXTS, batch_size=1, **kwargs)
    many = perplexity(tiny_llama, char_tokenizer, TEXTS, batch_size=64, **kwargs)
    assert many.windows == one.windows > 2
    assert many.tokens == one.tokens
    assert many.nll == pytest.approx(one.nll, rel=1e-6)


def test_pad_positions_never_enter_the_loss(tiny_llama):
    tokens = torch.arange(3, 40)
    windows = plan_windows(len(tokens), 16, 16, 0)
    assert windows[-1].end - windows[-1].start < 16  # a padded row exists
    results = []
    for pad_id in (0, 7, 42):
        ids, mask, targets = batch_windows(tokens, windows, bos=1, pad_id=pad_id)
        assert not targets[mask == 0].any()
        results.append(batch_nll(tiny_llama, ids, mask, targets))
    assert results[0][1] == len(tokens)
    for total, count in results[1:]:
        assert count == results[0][1]
        assert total == pytest.approx(results[0][0], rel=1e-6)


def test_max_tokens_prefix_equals_full_tokenization(char_tokenizer, stories):
    for tokenizer in (char_tokenizer, stories[1]):
        full = tokenizer("\n\n".join(TEXTS), add_special_tokens=False)["input_ids"]
        assert tokenize_corpus(tokenizer, TEXTS, max_tokens=37) == full[:37]
        assert tokenize_corpus(tokenizer, TEXTS) == full


def test_stories260k_matches_reference_and_is_in_domain(stories, shared_data):
    from replaceme.data import load_texts

    model, tokenizer = stories
    texts = load_texts(str(shared_data / "tinystories" / "valid.txt[:40]"))
    result = perplexity(model, tokenizer, texts, context_length=128, batch_size=8, max_tokens=2000)
    ids = tokenize_corpus(tokenizer, texts, max_tokens=2000)
    total, count = reference_nll(model, ids, tokenizer.bos_token_id, 128, 127)
    assert result.tokens == count == 2000
    assert result.nll == pytest.approx(total / count, rel=1e-5)
    assert 2.5 < result.ppl < 8  # README: ~4.6 at context 256 on TinyStories validation


def test_nan_model_is_a_clear_error(char_tokenizer, tiny_llama_factory):
    model = tiny_llama_factory(len(char_tokenizer), seed=1)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(ReplacemeError, match="NaN/Inf"):
        perplexity(model, char_tokenizer, TEXTS, context_length=32)


def test_too_short_and_bad_records(tiny_llama, char_tokenizer):
    with pytest.raises(ReplacemeError, match="too few"):
        perplexity(tiny_llama, char_tokenizer, ["a"], context_length=8, add_bos=False)
    with pytest.raises(ReplacemeError, match="plain text"):
        perplexity(tiny_llama, char_tokenizer, [{"role": "user"}], context_length=8)


def test_context_length_is_capped_at_model_positions(tiny_llama, char_tokenizer):
    capped = perplexity(tiny_llama, char_tokenizer, TEXTS, context_length=10_000)
    exact = perplexity(tiny_llama, char_tokenizer, TEXTS, context_length=tiny_llama.config.max_position_embeddings)
    assert capped == exact


def test_large_logits_run_in_row_chunks_with_the_same_loss(tiny_llama, monkeypatch):
    """A batch whose logits exceed the budget runs row by row: same tokens, same loss."""
    from replaceme.evaluation import perplexity as module

    tokens = torch.arange(3, 60)
    ids, mask, targets = batch_windows(tokens, plan_windows(len(tokens), 16, 16, 0), bos=1, pad_id=0)
    whole = batch_nll(tiny_llama, ids, mask, targets)
    row_bytes = ids.shape[1] * tiny_llama.config.vocab_size * 4
    monkeypatch.setitem(module.LOGITS_BYTES, "cpu", row_bytes)  # one row per forward
    chunked = batch_nll(tiny_llama, ids, mask, targets)
    assert ids.shape[0] > 2 and chunked[1] == whole[1] == len(tokens)
    assert chunked[0] == pytest.approx(whole[0], rel=1e-6)
