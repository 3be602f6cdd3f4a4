"""How much the layer-by-layer engine may keep on disk between layers, and the sweeps that follows.

Between two layers the engine keeps, for every batch of a sweep, the hidden states
its feed needs (one boundary for evaluation; a few for the statistics pass) in
files (:class:`~replaceme.offload.window.DiskStore`). With every calibration token
in one sweep that is ``tokens × hidden × bytes × boundaries``: at the paper's
8,000 × 1,024 tokens and hidden 4096 in bfloat16, 67 GB per boundary. When that
exceeds the disk budget (``--disk-budget``), the batches are split into
consecutive groups that each fit, and the layers are streamed once per group
(:func:`sweeps`): more reads of the checkpoint, the same numbers (the sums add
over batches in the same order; only float summation order across groups changes).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from replaceme.errors import ReplacemeError

#: ``--disk-budget auto``: this fraction of the free space where the window files go
AUTO_FRACTION = 0.5
_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30,
          "T": 2**40, "TB": 2**40}


def parse_size(text: str | int | None, option: str = "--disk-budget") -> int | None:
    """``"20G"``, ``"512M"``, ``"1.5T"``, a byte count, or ``"auto"``/None (None: decided
    at run time, e.g. from the free disk space, :func:`resolve_budget`); ``option`` names
    the setting in an error."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "auto"):
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?B?)\s*", str(text).upper())
        if not match:
            raise ReplacemeError(f"{option}: {text!r} is not a size (e.g. 200G, 512M, auto)")
        value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value < 1:
        raise ReplacemeError(f"{option}: {text!r} must be positive")
    return value


def resolve_budget(budget: int | None, directory: str | Path | None = None) -> int:
    """The budget in bytes: ``budget``, or :data:`AUTO_FRACTION` of the free space of
    ``directory`` (default: the system temporary directory)."""
    if budget is not None:
        return budget
    where = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    while not where.exists() and where != where.parent:
        where = where.parent
    return max(1, int(shutil.disk_usage(where).free * AUTO_FRACTION))


def sweeps(window_bytes: Sequence[int], budget: int) -> list[list[int]]:
    """Positions ``0..len-1`` split into consecutive groups whose summed window bytes fit
    ``budget`` (a batch larger than the budget alone still gets a group of its own)."""
    groups: list[list[int]] = []
    used = 0
    for k, size in enumerate(window_bytes):
        if not groups or used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(k)
        used += size
    return groups
