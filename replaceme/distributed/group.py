"""The process group's life: joining it, errors shared before collectives, rank 0's
work and its result, and the end of the collective part (ranks other than 0 leave)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from replaceme.distributed.world import device_name, world
from replaceme.errors import ReplacemeError, first_line

log = logging.getLogger(__name__)
T = TypeVar("T")
#: set by :func:`replaceme.distributed.ddp.keep`: a later collective stage (healing) follows the pass
kept = False


class RankDone(Exception):  # noqa: N818 - not an error: the normal end of a rank > 0
    """Raised on ranks other than 0 once their share of the statistics is delivered;
    the CLI turns it into exit status 0 without output."""


class PeerFailed(ReplacemeError):
    """Another rank failed; this rank stops with the same message (printed by rank 0 only)."""


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


def join(device: str) -> str:
    """Where this process runs (:func:`~replaceme.distributed.world.device_name`); under
    ``torchrun`` it joins the process group now, so that a write on rank 0
    (:func:`on_root`) can stop every rank."""
    name = device_name(device)
    if world().active:
        from replaceme.loading import resolve_device

        init(resolve_device(name))
    return name


def joined() -> bool:
    """Whether this process is in an active process group (a multi-process job)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def nccl_device() -> Any:
    """The CUDA device of this rank when the group runs NCCL (which moves CUDA tensors only), else None."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


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


def leave() -> None:
    """End of the collective part: barrier and leave the group; ranks other than 0
    then raise :class:`RankDone` (they have nothing left to do)."""
    if not joined() or kept:
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


def skip_pass() -> None:
    """No statistics pass in this run: under ``torchrun`` the ranks other than 0 have
    nothing to contribute and end here (:class:`RankDone`); rank 0 goes on alone."""
    if joined():
        leave()
    elif not world().is_root:
        raise RankDone


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


def from_root(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0 and its (picklable) result on every process; alone, ``compute()``.
    An error on rank 0 stops every rank (:func:`on_root`)."""
    if not joined():
        return compute()
    return broadcast(on_root(compute))
