"""Data-parallel calibration with ``torch.distributed`` (``torchrun``).

Under ``torchrun --nproc_per_node K --no-python replaceme prune ...`` (or ``compare``)
every process loads the model and tokenises the calibration set, then:

1. each rank runs the calibration batches ``b`` with ``b % K == rank`` (a deterministic
   split: the held-out and sample choice depend only on the data and the seed, so they
   are the same on every rank);
2. every additive statistic (distance-table sums, float64 Gram sums ``XᵀX``/``XᵀY``,
   ``tr YᵀY``, sequence and token counts) is all-reduced in float64
   (:func:`all_reduce_stats`) — the result equals one process's up to the order of the
   float64 additions;
3. the kept activation batches (the token sample of the cosine fit and LLM-Streamline's
   training pairs, and the held-out batches) are gathered to rank 0 in the one-process
   order, so **rank 0 fits on the same gathered sample** one process would use (no DDP:
   the fits are small next to the pass, and a gathered sample keeps the result equal to
   one process's);
4. after a barrier, ranks other than 0 leave (:class:`RankDone`, exit status 0): they
   write nothing, no cache entry, no comparison row. Rank 0 selects, solves, merges,
   evaluates and writes as a single process would.

All of it is one wrapper, :func:`shared_pass`, around the statistics pass (which itself
knows nothing of processes: it runs the batches it is given); orchestration calls it and
:func:`writer_lock`, :func:`on_root`, :func:`skip_pass`, and never asks for a rank. The
Python API (:func:`replaceme.prune`, :func:`replaceme.compare.runner.run_comparison`)
returns ``None`` on ranks other than 0 (:func:`root_result`); the CLI exits 0 there.

Healing (``--heal``) trains with torch's DistributedDataParallel instead:
:mod:`replaceme.distributed.ddp`.

Backends: gloo for a CPU model, NCCL for CUDA (each rank on ``cuda:LOCAL_RANK``). An
error on any rank during the pass is exchanged before the next collective, so every
rank stops with the same one-line error instead of waiting forever; a rank that dies
outright is torn down with the others by ``torchrun``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from replaceme.errors import ReplacemeError, first_line

if TYPE_CHECKING:
    from replaceme.stats.store import ActivationSample, ActivationStats

log = logging.getLogger(__name__)
T = TypeVar("T")
_kept = False  # set by ddp.keep(): a later collective stage (healing) follows the pass


class RankDone(Exception):  # noqa: N818 - not an error: the normal end of a rank > 0
    """Raised on ranks other than 0 once their share of the statistics is delivered;
    the CLI turns it into exit status 0 without output."""


class PeerFailed(ReplacemeError):
    """Another rank failed; this rank stops with the same message (printed by rank 0 only)."""


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


def join(device: str) -> str:
    """Where this process runs (:func:`device_name`); under ``torchrun`` it joins the
    process group now, so that a write on rank 0 (:func:`on_root`) can stop every rank."""
    name = device_name(device)
    if world().active:
        from replaceme.loading import resolve_device

        init(resolve_device(name))
    return name


@contextlib.contextmanager
def writer_lock(target: Any) -> Iterator[None]:
    """The output lock of ``target`` (:func:`replaceme.outputs.output_lock`) on the process
    that writes (rank 0 under ``torchrun``); nothing elsewhere or without a target."""
    if target is None or not world().is_root:
        yield
        return
    from replaceme.outputs import output_lock

    with output_lock(target):
        yield


def skip_pass() -> None:
    """No statistics pass in this run: under ``torchrun`` the ranks other than 0 have
    nothing to contribute and end here (:class:`RankDone`); rank 0 goes on alone."""
    if joined():
        leave()
    elif not world().is_root:
        raise RankDone


def init(device: Any) -> None:
    """Join the process group (once): NCCL when ``device`` is CUDA, else gloo."""
    import torch
    import torch.distributed as dist

    if not world().active or dist.is_initialized():
        return
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    log.debug("rank %d of %d joined the %s process group", dist.get_rank(), dist.get_world_size(), backend)


def check(error: BaseException | None) -> None:
    """Exchange errors before a collective: if any rank failed, every rank raises.

    The failing rank re-raises its own error; the others raise :class:`PeerFailed`
    with the first failing rank's message.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        if error is not None:
            raise error
        return
    message = None if error is None else first_line(error)
    messages: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, message)
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        rank, msg = failed[0]
        raise PeerFailed(f"rank {rank}: {msg}")


def run_checked(fn: Callable[[], T]) -> T:
    """``fn()``, with its error (if any) shared with the other ranks by :func:`check`."""
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - re-raised by check() on this rank
        check(exc)
        raise
    check(None)
    return result


def on_root(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only (e.g. a write); its error stops every rank."""
    return run_checked(fn if world().is_root else (lambda: None))


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def joined() -> bool:
    """Whether this process is in an active process group (a multi-process job)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def leave() -> None:
    """End of the collective part: barrier and leave the group; ranks other than 0
    then raise :class:`RankDone` (they have nothing left to do)."""
    if not joined() or _kept:
        return
    import torch.distributed as dist

    root = dist.get_rank() == 0
    dist.barrier()
    dist.destroy_process_group()
    if not root:
        raise RankDone


def abort() -> None:
    """Leave the process group without a barrier (on an error path)."""
    if joined():
        import torch.distributed as dist

        dist.destroy_process_group()


def _nccl_device() -> Any:
    """The CUDA device of this rank when the group runs NCCL (which reduces CUDA tensors only), else None."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


def all_reduce_(tensor: Any) -> None:
    """Sum ``tensor`` over ranks in place, in float64 (a float64 tensor is reduced as is)."""
    import torch
    import torch.distributed as dist

    work, nccl = tensor, _nccl_device()
    if tensor.dtype != torch.float64 or (nccl is not None and tensor.device.type != "cuda"):
        work = tensor.to(nccl or tensor.device, torch.float64)
    dist.all_reduce(work)
    if work is not tensor:
        tensor.copy_(work.to(tensor.device, tensor.dtype))


def all_reduce_stats(stats: ActivationStats) -> None:
    """Combine every rank's :class:`~replaceme.stats.store.ActivationStats` in place.

    Every field of the store is covered (a test checks that no field is left out):

    - ``angular`` (mean over sequences) and ``token_cosine`` (mean over non-pad
      tokens) become sums again, are all-reduced in float64, and are divided by the
      total counts;
    - ``gram``: ``XᵀX``, ``XᵀY`` (float64; a ``XᵀX`` shared by several blocks is
      reduced once), ``tr YᵀY`` and the token counts are summed;
    - ``sequences`` and ``tokens`` are summed, ``seconds`` is the slowest rank's;
    - ``sample`` is not reduced: :func:`gather_sample` brings the kept batches to
      rank 0 in the one-process order.

    ``num_layers`` and ``hidden_size`` are the same on every rank.
    """
    import torch

    if not joined():
        return
    dev = next((t.device for t in stats.angular.values()), torch.device("cpu"))
    counts = torch.tensor([stats.sequences, stats.tokens], dtype=torch.float64, device=dev)
    all_reduce_(counts)
    sequences, tokens = (int(round(v)) for v in counts.tolist())
    for table, own, total in ((stats.angular, stats.sequences, sequences), (stats.token_cosine, stats.tokens, tokens)):
        for n, mean in table.items():
            summed = mean.to(torch.float64) * own
            all_reduce_(summed)
            table[n] = summed / max(total, 1)
    seen: set[int] = set()
    for gram in stats.gram.values():
        for t in (gram.xtx, gram.xty):
            if id(t) not in seen:
                seen.add(id(t))
                all_reduce_(t)
    if stats.gram:
        keys = list(stats.gram)
        scalars = torch.tensor([[stats.gram[k].yty, stats.gram[k].tokens] for k in keys], dtype=torch.float64, device=dev)
        all_reduce_(scalars)
        for k, (yty, count) in zip(keys, scalars.tolist()):
            stats.gram[k].yty, stats.gram[k].tokens = yty, int(round(count))
    import torch.distributed as dist

    seconds = torch.tensor([stats.seconds], dtype=torch.float64, device=_nccl_device() or "cpu")
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    stats.sequences, stats.tokens, stats.seconds = sequences, tokens, float(seconds)


#: fields of ActivationStats and how all_reduce_stats combines them (checked by a test).
REDUCED_FIELDS = {
    "num_layers": "same on every rank", "hidden_size": "same on every rank",
    "angular": "float64 sum of per-sequence distances / total sequences",
    "token_cosine": "float64 sum of per-token cosines / total tokens",
    "gram": "float64 sums", "sample": "gathered to rank 0", "sequences": "sum", "tokens": "sum",
    "seconds": "max", "holdout_batches": "same on every rank (the held-out batches are chosen globally)",
    "holdout_tokens": "same on every rank",
}


def gather_sample(sample: ActivationSample) -> ActivationSample:
    """Every rank's kept batches on rank 0, in the one-process order (by their recorded
    positions); the other ranks get an empty sample. Tensors travel pickled."""
    import torch.distributed as dist

    from replaceme.stats.store import ActivationSample

    if not dist.is_initialized():
        return sample
    mine = (sample.train_positions, sample.train, sample.holdout_positions, sample.holdout)
    parts: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(mine, parts, dst=0)
    if parts is None:
        return ActivationSample()
    train = sorted(((p, b) for part in parts for p, b in zip(part[0], part[1])), key=lambda pb: pb[0])
    held = sorted(((p, b) for part in parts for p, b in zip(part[2], part[3])), key=lambda pb: pb[0])
    return ActivationSample(train=[b for _, b in train], holdout=[b for _, b in held],
                            train_positions=[p for p, _ in train], holdout_positions=[p for p, _ in held])


def shared_pass(device: Any, num_batches: int, run: Callable[[Sequence[int] | None], ActivationStats], *,
                load: Callable[[], ActivationStats | None] | None = None,
                save: Callable[[ActivationStats], None] | None = None) -> ActivationStats:
    """The shared statistics pass, in one process or across a ``torchrun`` job.

    ``run(batches)`` runs the pass on the given calibration batches (None: all of
    them); ``load()`` returns cached statistics or None; ``save(stats)`` stores them.

    One process: ``load()``, else ``run(None)`` then ``save``. Under ``torchrun``: the
    process group is joined (NCCL for a CUDA ``device``, else gloo); rank 0 alone tries
    ``load()`` and tells the others; on a miss every rank runs its shard of
    ``num_batches`` (batch ``b`` on rank ``b % K``); an error on any rank stops every
    rank with the same one-line message; the kept batches are gathered to rank 0 in
    the one-process order and every sum is all-reduced in float64
    (:func:`all_reduce_stats`); after a barrier the group is left and ranks other than
    0 raise :class:`RankDone`. Rank 0 alone saves and returns the statistics.
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
            stats = cached
        else:
            stats = run_checked(lambda: run(w.shard(num_batches)))
            stats.sample = gather_sample(stats.sample)
            all_reduce_stats(stats)  # sums and counts over the ranks
    except BaseException:
        abort()
        raise
    leave()
    if not hit and save is not None:
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
