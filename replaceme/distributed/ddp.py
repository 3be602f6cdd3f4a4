"""Data-parallel *healing* with torch's DistributedDataParallel (``torchrun``).

The healing loop (:mod:`replaceme.healing.loop`) asks only these questions and never
for a rank: how many processes train together, which rows of a global batch are this
process's, the module to train (wrapped in DDP, which broadcasts rank 0's parameters
at construction and all-reduces gradients as their mean over processes), a float
summed over processes, and whether this process shows progress. Outside a joined
``torchrun`` job everything is the one-process answer.

``prune --heal`` under ``torchrun``: :func:`keep` keeps every process in the group after
the statistics pass; rank 0 selects, compensates and merges, and :func:`from_root` gives
every process its plan and compensations, which each merges into its own variant; all
train together; :func:`release` then ends the job for ranks other than 0 (rank 0 writes).
"""

from __future__ import annotations

from typing import Any

from replaceme.distributed import group
from replaceme.distributed.group import from_root, join, joined, leave, nccl_device
from replaceme.distributed.reduce import all_reduce_
from replaceme.distributed.world import world

__all__ = ["from_root", "keep", "release", "shard_rows", "shows_progress", "size", "sum_over_ranks", "wrap"]


def size() -> int:
    """Processes that train together: the group's size in a joined job, else 1."""
    import torch.distributed as dist

    return dist.get_world_size() if joined() else 1


def shard_rows(rows: list[int]) -> list[int]:
    """This process's share of one global batch (``rows[rank::size]``; all of it alone)."""
    if not joined():
        return rows
    import torch.distributed as dist

    return rows[dist.get_rank()::dist.get_world_size()]


def wrap(module: Any) -> Any:
    """``module`` in DistributedDataParallel in a joined job, else ``module`` itself."""
    if not joined():
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def sum_over_ranks(value: float) -> float:
    """``value`` summed over the processes of a joined job (float64), else itself."""
    if not joined():
        return value
    import torch

    box = torch.tensor([value], dtype=torch.float64, device=nccl_device() or "cpu")
    all_reduce_(box)
    return float(box)


def shows_progress() -> bool:
    """Whether this process draws progress bars (rank 0 of a job, or a lone process)."""
    return world().is_root


def keep(device: Any) -> None:
    """Keep every process of a ``torchrun`` job in the group after the statistics pass, so
    that healing trains on all of them; :func:`release` ends it. Nothing alone."""
    if world().active:
        join(device)
        group.kept = True


def release() -> None:
    """End what :func:`keep` kept: barrier, leave; ranks other than 0 raise ``RankDone``."""
    if group.kept:
        group.kept = False
        leave()

