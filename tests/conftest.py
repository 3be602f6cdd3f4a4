"""Fixtures shared by the whole suite (helpers live in ``tiny.py``), and the two test tiers.

- ``pytest -q`` runs the fast tier: every test not marked ``slow`` (the architecture
  matrices on one pre-norm and one post-norm model, ``tiny.FAST_ARCHS``; subprocess
  races, multi-process runs and the real-model end-to-end runs are ``slow``).
- ``pytest -q --full`` runs everything (what CI runs, the README's test command), except
  that of a test marked ``exhaustive`` (a matrix of end-to-end cases) it runs every
  :data:`EXHAUSTIVE_EVERY`-th case; ``--full --exhaustive`` runs them all.

An explicit ``-m`` expression runs as asked, and so does a test named by its node id
(``file.py::test``), whatever its tier.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from tiny import calibration_text, make_tokenizer, shared_dir, tiny_model


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="run the whole suite, tests marked slow included (what CI runs)")
    parser.addoption("--exhaustive", action="store_true",
                     help="with --full: every case of the tests marked exhaustive (else every 8th)")


#: of each test marked ``exhaustive``, ``--full`` runs the cases 0, N, 2N, ... (in collection order)
EXHAUSTIVE_EVERY = 8


def _named(item, node_ids: list[str]) -> bool:
    """Whether ``item`` was named on the command line by its node id (or a prefix with ``::``)."""
    return any(item.nodeid == n or item.nodeid.startswith((n + "[", n + "::")) for n in node_ids)


def pytest_collection_modifyitems(config, items):
    """Leave the ``slow`` tests out unless ``--full`` or ``-m`` asks for them, and all but every
    :data:`EXHAUSTIVE_EVERY`-th case of an ``exhaustive`` test unless ``--exhaustive``; a test
    named by its node id always runs."""
    root = Path(str(config.rootpath))
    node_ids = []
    for arg in config.args:
        if "::" in arg:
            path, _, rest = arg.partition("::")
            resolved = Path(path).resolve()
            relative = resolved.relative_to(root) if resolved.is_relative_to(root) else Path(path)
            node_ids.append(f"{relative.as_posix()}::{rest}")
    if config.getoption("--full") or config.option.markexpr:
        left_out = [] if config.getoption("--exhaustive") else _beyond_the_sample(items, node_ids)
    else:
        left_out = [item for item in items if item.get_closest_marker("slow") and not _named(item, node_ids)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        chosen = set(map(id, left_out))
        items[:] = [item for item in items if id(item) not in chosen]


def _beyond_the_sample(items, node_ids: list[str]) -> list:
    """The cases of ``exhaustive`` tests outside every :data:`EXHAUSTIVE_EVERY`-th one."""
    seen: dict[str, int] = {}
    out = []
    for item in items:
        if item.get_closest_marker("exhaustive") and not _named(item, node_ids):
            name = f"{item.path}::{getattr(item, 'originalname', item.name)}"
            seen[name] = seen.get(name, -1) + 1
            if seen[name] % EXHAUSTIVE_EVERY:
                out.append(item)
    return out


def pytest_report_header(config):
    if not (config.getoption("--full") or config.option.markexpr):
        return "fast tier: tests marked slow are left out (pytest --full runs them)"
    return None


@pytest.fixture(autouse=True)
def _restore_replaceme_logger():
    """An in-process CLI run routes the ``replaceme`` logger to its own handler and cuts
    its propagation (right for a process, wrong for the tests after it): restore it."""
    logger = logging.getLogger("replaceme")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
def shared() -> Path:
    path = shared_dir()
    if path is None or not (path / "models" / "stories260K").is_dir():
        pytest.skip("../shared (real model and data) is not available; set REPLACEME_SHARED")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own statistics cache and no progress bars, and replaceme's log
    records reach pytest's ``caplog`` (a command run by an earlier test stops their propagation)."""
    monkeypatch.setattr(logging.getLogger("replaceme"), "propagate", True)
    monkeypatch.setenv("REPLACEME_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("REPLACEME_NO_PROGRESS", "1")
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and robust on a busy machine


@pytest.fixture(autouse=True)
def _logging_restored():
    """A command run in-process sets up replaceme's logger, the warnings logger and the
    third-party loggers (own handlers, no propagation, levels) and captures warnings; restore
    all of it after each test so that later tests' ``caplog`` and warnings see their records."""
    from replaceme.console import THIRD_PARTY_LOGGERS

    loggers = [logging.getLogger(name) for name in ("replaceme", "py.warnings", *THIRD_PARTY_LOGGERS)]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    capturing = logging._warnings_showwarning is not None  # noqa: SLF001 - logging.captureWarnings' own state
    yield
    for lg, (handlers, propagate, level) in zip(loggers, saved):
        lg.handlers, lg.propagate, lg.level = list(handlers), propagate, level
    # setup_logging turns on logging.captureWarnings, which a later call cannot turn on again
    # once it is on: put it back as it was, so each test's warnings reach pytest and its setup alike
    logging.captureWarnings(capturing)


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
