"""The kept activation batches of every rank brought to rank 0, as tensors.

Each rank first sends rank 0 a small description of its kept batches (their positions
in the whole pass's order and, for every tensor, its shape and dtype: no data); then
rank 0 takes the batches in the one-process order and receives each other rank's
tensors point to point (``dist.recv``, the raw bytes of one tensor at a time) straight
into its sample store: a CPU tensor, or the memory-mapped spill
(:class:`~replaceme.stats.spill.Spill`) when the run keeps its sample on disk. Nothing
is pickled, rank 0 never holds a second copy of the sample, and each sender drops a
batch once it is sent. Under NCCL the bytes travel through the ranks' CUDA devices,
one tensor at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from replaceme.distributed.group import joined, nccl_device

if TYPE_CHECKING:
    import torch

    from replaceme.stats.store import ActivationSample, BatchActivations

#: fields of a batch whose tensors are activations (they go to the sample store; the rest stay in RAM)
STORED_FIELDS = ("boundaries", "mlp")


class Slot(NamedTuple):
    """Where a tensor was in a batch: its index in the batch's tensor list, shape and dtype."""

    index: int
    shape: tuple[int, ...]
    dtype: Any


def flatten(value: Any, tensors: list[torch.Tensor]) -> Any:
    """``value`` with every tensor replaced by a :class:`Slot` (appended to ``tensors``);
    dicts, lists and tuples are walked, anything else is kept as is."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return Slot(len(tensors) - 1, tuple(value.shape), value.dtype)
    if isinstance(value, dict):
        return {k: flatten(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(flatten(v, tensors) for v in value)
    return value


def unflatten(skeleton: Any, fill: Callable[[Slot], torch.Tensor]) -> Any:
    """The inverse of :func:`flatten`: every :class:`Slot` becomes ``fill(slot)``, in slot order."""
    if isinstance(skeleton, Slot):
        return fill(skeleton)
    if isinstance(skeleton, dict):
        return {k: unflatten(v, fill) for k, v in skeleton.items()}
    if isinstance(skeleton, (list, tuple)):
        return type(skeleton)(unflatten(v, fill) for v in skeleton)
    return skeleton


def describe(batch: BatchActivations) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """A batch's skeleton (field -> structure with :class:`Slot` s) and its tensors in slot order."""
    tensors: list[torch.Tensor] = []
    skeleton = {f.name: flatten(getattr(batch, f.name), tensors) for f in dataclasses.fields(batch)}
    return skeleton, tensors


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous tensor (any dtype travels as its raw bytes)."""
    import torch

    return tensor.reshape(-1).view(torch.uint8)


def send(tensor: torch.Tensor) -> None:
    """Send one tensor's bytes to rank 0 (through this rank's CUDA device under NCCL)."""
    import torch.distributed as dist

    if tensor.numel() == 0:
        return
    dev = nccl_device()
    data = tensor.detach().to(dev or "cpu").contiguous()
    dist.send(_bytes(data), dst=0)


def receive(slot: Slot, src: int, store: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """One tensor from rank ``src``, received into a new CPU tensor, or into a buffer handed
    to ``store`` (which keeps its own copy, e.g. a file) when a store is given."""
    import torch
    import torch.distributed as dist

    dev = nccl_device()
    into = torch.empty(slot.shape, dtype=slot.dtype, device=dev or "cpu")
    if into.numel():
        dist.recv(_bytes(into), src=src)
    if store is not None:
        return store(into)
    return into.to("cpu")


def _order(parts: list[list[tuple[str, int, Any]]], kind: str) -> list[tuple[int, int, Any]]:
    """``(position, rank, skeleton)`` of every rank's batches of ``kind``, in the one-process order."""
    return sorted((pos, rank, skel) for rank, part in enumerate(parts) for k, pos, skel in part if k == kind)


def _own_batches(sample: ActivationSample) -> list[tuple[str, int, BatchActivations]]:
    """This rank's kept batches in the order it sends them: train then held out, by position."""
    train = sorted(zip(sample.train_positions, sample.train), key=lambda pb: pb[0])
    held = sorted(zip(sample.holdout_positions, sample.holdout), key=lambda pb: pb[0])
    return [("train", p, b) for p, b in train] + [("holdout", p, b) for p, b in held]


def gather_sample(sample: ActivationSample,
                  store: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ActivationSample:
    """Every rank's kept batches on rank 0, in the one-process order (by their recorded
    positions), activations written by ``store`` (default: CPU tensors); the other
    ranks send theirs, drop them and get an empty sample. Alone: ``sample`` itself."""
    import torch.distributed as dist

    from replaceme.stats.store import ActivationSample, BatchActivations

    if not joined():
        return sample
    rank = dist.get_rank()
    own = _own_batches(sample)
    sample.train, sample.holdout = [], []  # the batches live on in `own` until sent
    described = [(kind, pos, describe(batch)) for kind, pos, batch in own]
    del own
    parts: list[Any] | None = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object([(kind, pos, skel) for kind, pos, (skel, _) in described], parts, dst=0)
    if rank != 0:
        for _, _, (_, tensors) in described:
            for tensor in tensors:
                send(tensor)
            tensors.clear()  # this batch is on rank 0 now
        return ActivationSample()
    mine = {(kind, pos): tensors for kind, pos, (_, tensors) in described}
    out = ActivationSample()
    for kind in ("train", "holdout"):
        for pos, src, skeleton in _order(parts, kind):
            fields = {}
            for name, sub in skeleton.items():
                if src == 0:
                    fields[name] = unflatten(sub, lambda slot, t=mine[kind, pos]: t[slot.index])
                else:
                    keep = store if name in STORED_FIELDS else None
                    fields[name] = unflatten(sub, lambda slot, keep=keep: receive(slot, src, keep))
            getattr(out, kind).append(BatchActivations(**fields))
            getattr(out, f"{kind}_positions").append(pos)
    return out
