"""Fixtures of the LLM-Streamline tests: one thread, tiny seeded models, and a
pruning helper (the ``tokenizer`` and ``calib_file`` fixtures come from
``tests/conftest.py``, as does the per-test statistics cache)."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

@pytest.fixture
def tiny_lm():
    """``tiny_lm(arch="llama", seed=0, layers=4)``: a seeded random tiny causal LM in eval mode."""
    return lambda arch="llama", seed=0, layers=4: tiny_model(arch, seed, layers)


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
