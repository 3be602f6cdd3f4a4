"""The statistics pass shared by the ranks of a ``torchrun`` job, and what a public
entry point returns on the ranks that write nothing."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from replaceme.distributed.group import RankDone, abort, broadcast, init, leave, run_checked
from replaceme.distributed.reduce import reduce_stats
from replaceme.distributed.sample import gather_sample
from replaceme.distributed.world import world

if TYPE_CHECKING:
    import torch

    from replaceme.stats.store import ActivationStats

T = TypeVar("T")


def tables_only(stats: ActivationStats) -> ActivationStats:
    """``stats`` without its Gram sums and sample (what a rank other than 0 keeps)."""
    from replaceme.stats.store import ActivationSample

    return dataclasses.replace(stats, gram={}, sample=ActivationSample())


def shared_pass(device: Any, num_batches: int, run: Callable[[Sequence[int] | None], ActivationStats], *,
                load: Callable[[], ActivationStats | None] | None = None,
                save: Callable[[ActivationStats], None] | None = None,
                store: Callable[[torch.Tensor], torch.Tensor] | None = None,
                final: bool = True) -> ActivationStats:
    """The shared statistics pass, in one process or across a ``torchrun`` job.

    ``run(batches)`` runs the pass on the given calibration batches (None: all of
    them); ``load()`` returns cached statistics or None; ``save(stats)`` stores them;
    ``store(tensor)`` keeps an activation of the sample (e.g. a
    :class:`~replaceme.stats.spill.Spill`; default: a CPU tensor).

    One process: ``load()``, else ``run(None)`` then ``save``. Under ``torchrun``: the
    process group is joined (NCCL for a CUDA ``device``, else gloo); rank 0 alone tries
    ``load()`` and tells the others; on a miss every rank runs its shard of
    ``num_batches`` (batch ``b`` on rank ``b % K``); an error on any rank stops every
    rank with the same one-line message; the kept batches are sent to rank 0 in the
    one-process order (:func:`~replaceme.distributed.sample.gather_sample`), the Gram
    sums are reduced to rank 0 and the tables all-reduced, in float64
    (:func:`~replaceme.distributed.reduce.reduce_stats`). Rank 0 alone saves and gets
    the whole statistics; the other ranks get the distance tables and counts only.

    With ``final`` (the last pass of the run), the group is then left after a barrier and
    ranks other than 0 raise :class:`RankDone`; without it every rank stays for another
    pass (a second pass's request is chosen from the first's tables).
    """
    w = world()
    if not w.active:
        cached = load() if load is not None else None
        if cached is not None:
            return cached
        stats = run(None)
        if save is not None:
            save(stats)
        return stats
    init(device)
    try:
        cached = load() if load is not None and w.is_root else None
        hit = load is not None and broadcast(cached is not None)  # on a hit, ranks > 0 have nothing to add
        if hit:
            tables = broadcast(tables_only(cached) if w.is_root else None)
            stats = cached if w.is_root else tables
        else:
            stats = run_checked(lambda: run(w.shard(num_batches)))
            stats.sample = gather_sample(stats.sample, store)
            reduce_stats(stats)  # Gram sums to rank 0, tables and counts to every rank
    except BaseException:
        abort()
        raise
    if final:
        leave()
    if w.is_root and not hit and save is not None:
        save(stats)
    return stats


def root_result(fn: Callable[..., T]) -> Callable[..., T | None]:
    """For a public entry point (``replaceme.prune``, ``run_comparison``): on a rank other
    than 0 of a ``torchrun`` job, which has delivered its share and writes nothing,
    return None instead of raising :class:`RankDone`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        try:
            return fn(*args, **kwargs)
        except RankDone:
            return None

    return wrapper
