"""Hostile or careless inputs are refused early, in one line, or distrusted (GUIDE §6):
statistics caches holding another model's statistics, model folders with special
files or headers that contradict their config, giant calibration records, bad counts."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch
from tiny import calibration_text, make_tokenizer, tiny_model

from replaceme.api import prune
from replaceme.calibration import CalibrationSpec
from replaceme.paths import cache_dir


def _blocks(result) -> list[tuple[int, int]]:
    return [(b.start, b.end) for b in result.outcome.plan.blocks]


def test_a_cache_entry_of_another_model_under_this_models_key_is_refused(tmp_path, caplog):
    tok = make_tokenizer()
    spec = CalibrationSpec(str(calibration_text(tmp_path / "calib.txt")), samples=8, max_length=16, batch_size=4)

    def run(model):
        return prune(model, "replaceme-lstsq", 2, spec, tokenizer=tok, device="cpu", dtype="float32")

    folder = cache_dir("stats")
    block_b = _blocks(run(tiny_model("llama", seed=0, layers=6)))
    (entry_b,) = folder.iterdir()
    kept_b = entry_b.rename(tmp_path / "b.pt")
    block_a = _blocks(run(tiny_model("llama", seed=1, layers=9)))
    assert block_a != block_b  # otherwise the planted entry could not steer B's choice
    (entry_a,) = folder.iterdir()
    planted = torch.load(entry_a, weights_only=True)  # a valid entry of model A, filed under B's key
    planted["key"] = entry_b.stem
    torch.save(planted, entry_b)
    entry_a.unlink()
    with caplog.at_level(logging.WARNING):
        again = run(tiny_model("llama", seed=0, layers=6))
    assert _blocks(again) == block_b
    assert "does not fit this model" in caplog.text and "9 layers" in caplog.text
    assert torch.load(entry_b, weights_only=True)["stats"]["num_layers"] == 6  # recomputed and stored anew
    assert kept_b.exists()


def test_statistics_that_do_not_fit_the_model_or_request_are_named():
    from replaceme.stats.fit import misfit
    from replaceme.stats.request import StatsRequest
    from replaceme.stats.store import ActivationSample, ActivationStats, BatchActivations, GramKey, GramSums

    def stats(L=4, h=3, gram=3, state=3):
        batch = BatchActivations(mask=torch.ones(2, 5, dtype=torch.bool), boundaries={1: torch.zeros(2, 5, state)})
        return ActivationStats(L, h, angular={2: torch.zeros(L - 1)}, token_cosine={2: torch.zeros(L - 1)},
                               gram={GramKey(1, 3): GramSums(torch.zeros(gram, gram), torch.zeros(gram, gram), 0.0, 10)},
                               sample=ActivationSample(train=[batch]))

    request = StatsRequest(block_sizes={2}, gram_blocks={(1, 3)}, sample_boundaries={1})
    assert misfit(stats(), 4, 3, request) is None
    assert "width 5" in misfit(stats(), 4, 5)
    assert "Gram xtx" in misfit(stats(gram=2), 4, 3)
    assert "boundary 1 of shape (2, 5, 4)" in misfit(stats(state=4), 4, 3)
    assert "no distances for block size 3" in misfit(stats(), 4, 3, StatsRequest(block_sizes={3}))
    assert "no Gram sums for block 2..4" in misfit(stats(), 4, 3, StatsRequest(gram_blocks={(2, 4)}))
    assert "lacks the states [2]" in misfit(stats(), 4, 3, StatsRequest(sample_boundaries={2}))
