"""Fixtures shared by the whole suite (helpers live in ``tiny.py``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from tiny import calibration_text, make_tokenizer, shared_dir, tiny_model


@pytest.fixture
def shared() -> Path:
    path = shared_dir()
    if path is None or not (path / "models" / "stories260K").is_dir():
        pytest.skip("../shared (real model and data) is not available; set REPLACEME_SHARED")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own statistics cache and no progress bars."""
    monkeypatch.setenv("REPLACEME_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("REPLACEME_NO_PROGRESS", "1")
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and robust on a busy machine


@pytest.fixture(autouse=True)
def _logging_restored():
    """A command run in-process sets up replaceme's logger (its own handler, no propagation);
    restore it after each test so that later tests' ``caplog`` sees replaceme's records."""
    logger = logging.getLogger("replaceme")
    saved = logger.handlers[:], logger.propagate, logger.level
    yield
    logger.handlers, logger.propagate, logger.level = list(saved[0]), saved[1], saved[2]


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def calib_file(tmp_path) -> Path:
    return calibration_text(tmp_path / "calib.txt")


@pytest.fixture
def tiny_dir(tmp_path, tokenizer) -> Path:
    """A tiny Llama saved with its tokenizer as a model directory."""
    path = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
