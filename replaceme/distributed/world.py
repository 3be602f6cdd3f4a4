"""Where this process stands in a ``torchrun`` job, from the environment alone (no process group)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from replaceme.errors import ReplacemeError


@dataclass(frozen=True)
class World:
    """This process's place in a ``torchrun`` job (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``).

    A plain run is a world of one (``size == 1``, ``rank == 0``).
    """

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def shard(self, count: int) -> list[int]:
        """Indices ``0..count-1`` this rank handles: ``i % size == rank``."""
        return [i for i in range(count) if i % self.size == self.rank]


def world() -> World:
    """The world from the environment ``torchrun`` sets (a world of one without it)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ReplacemeError(f"bad torchrun environment (WORLD_SIZE/RANK/LOCAL_RANK): {exc}") from None
    if size < 1 or not 0 <= rank < size:
        raise ReplacemeError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={size}")
    return World(size, rank, local)


def device_name(device: str) -> str:
    """The device this rank runs on: ``auto``/``cuda`` become ``cuda:LOCAL_RANK`` in a
    multi-process job on a CUDA machine; anything else is unchanged."""
    w = world()
    if not w.active or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    return f"cuda:{w.local_rank}"
