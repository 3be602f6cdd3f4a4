"""Resumable healing: the loop's checkpoints, kept in replaceme's cache (never beside the output).

A checkpoint lives in ``<cache>/heal/<key>/`` where ``key`` hashes everything that
decides the result (student weights before training, healer and its options, the
packed data, seed, number of processes). A run with the same inputs finds it and
resumes from its step; a finished run deletes it. Files are written under a
temporary name and renamed, so a run killed while saving leaves the previous
checkpoint; they hold only tensors and plain containers, read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from replaceme.cache_location import cache_dir

log = logging.getLogger(__name__)
_STATE = "state.pt"


def identity_key(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class CheckpointStore:
    """The checkpoint directory of one healing run.

    Args:
        identity: JSON-able description of every input that decides the result.
        root: parent directory (default: ``<cache>/heal``).
    """

    def __init__(self, identity: dict[str, Any], root: Path | None = None):
        self.key = identity_key(identity)
        self.directory = (root or cache_dir("heal")) / self.key

    @property
    def path(self) -> Path:
        return self.directory / _STATE

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint of this run, or None (absent or unreadable: start over)."""
        if not self.path.is_file():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint means starting over, not failing
            log.warning("healing checkpoint %s is unreadable (%s); starting over", self.path, exc)
            return None

    def save(self, payload: dict[str, Any]) -> None:
        """Write ``payload`` atomically (temporary name unique to this process, then rename)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{_STATE}.{os.getpid()}.tmp"
        try:
            torch.save(payload, tmp)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete this run's checkpoint directory (after a finished run)."""
        shutil.rmtree(self.directory, ignore_errors=True)
