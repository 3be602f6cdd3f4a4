"""Sums over ranks: the statistics of a shared pass combined, float64.

The float64 Gram sums (``XᵀX``, ``XᵀY``: ``hidden²`` each, for every candidate block)
are what grows with the model; they are reduced to rank 0 alone, one matrix at a time
(no rank holds a second copy of them), and freed on the other ranks, which apply no
method. The distance tables and counts are small and every rank may need them (a
second pass's request is chosen from them), so they are all-reduced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replaceme.distributed.group import joined, nccl_device

if TYPE_CHECKING:
    from replaceme.stats.store import ActivationStats

#: fields of ActivationStats and how :func:`reduce_stats` combines them (checked by a test).
REDUCED_FIELDS = {
    "num_layers": "same on every rank", "hidden_size": "same on every rank",
    "angular": "float64 sum of per-sequence distances / total sequences (on every rank)",
    "token_cosine": "float64 sum of per-token cosines / total tokens (on every rank)",
    "gram": "float64 sums on rank 0; freed on the other ranks",
    "sample": "gathered to rank 0 (replaceme.distributed.sample); empty on the other ranks",
    "sequences": "sum", "tokens": "sum", "seconds": "max",
    "holdout_batches": "same on every rank (the held-out batches are chosen globally)",
    "holdout_tokens": "same on every rank",
    "work_bytes": "set after the pass from the statistics plan (the same on every rank)",
}


def _work_copy(tensor: Any) -> Any:
    """``tensor`` itself when a collective can use it (float64, and on CUDA under NCCL), else such a copy."""
    import torch

    nccl = nccl_device()
    if tensor.dtype != torch.float64 or (nccl is not None and tensor.device.type != "cuda"):
        return tensor.to(nccl or tensor.device, torch.float64)
    return tensor


def all_reduce_(tensor: Any) -> None:
    """Sum ``tensor`` over ranks in place on every rank, in float64."""
    import torch.distributed as dist

    work = _work_copy(tensor)
    dist.all_reduce(work)
    if work is not tensor:
        tensor.copy_(work.to(tensor.device, tensor.dtype))


def reduce_to_root_(tensor: Any) -> None:
    """Sum ``tensor`` over ranks into rank 0's ``tensor``, in float64; on the other ranks
    its content is undefined afterwards (they drop it)."""
    import torch.distributed as dist

    work = _work_copy(tensor)
    dist.reduce(work, dst=0)
    if work is not tensor and dist.get_rank() == 0:
        tensor.copy_(work.to(tensor.device, tensor.dtype))


def max_over_ranks(value: float) -> float:
    """The largest ``value`` of any rank."""
    import torch
    import torch.distributed as dist

    box = torch.tensor([value], dtype=torch.float64, device=nccl_device() or "cpu")
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return float(box)


def reduce_stats(stats: ActivationStats) -> None:
    """Combine every rank's :class:`~replaceme.stats.store.ActivationStats` in place
    (every field as :data:`REDUCED_FIELDS` says; a test checks that none is left out).

    - ``angular`` (mean over sequences) and ``token_cosine`` (mean over non-pad tokens)
      become sums again, are all-reduced in float64 and divided by the total counts;
    - ``gram``: ``XᵀX`` (one tensor for every block with the same start, reduced once),
      ``XᵀY``, ``tr YᵀY`` and the token counts are summed on rank 0, matrix by matrix
      (``dist.reduce``); the other ranks then drop their Gram sums;
    - ``sequences`` and ``tokens`` are summed, ``seconds`` is the slowest rank's;
    - ``sample`` is left alone (:func:`replaceme.distributed.sample.gather_sample`).
    """
    import torch
    import torch.distributed as dist

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
    for gram in stats.gram.values():  # the same keys in the same order on every rank (one request)
        for t in (gram.xtx, gram.xty):
            if id(t) not in seen:
                seen.add(id(t))
                reduce_to_root_(t)
    if stats.gram:
        keys = list(stats.gram)
        scalars = torch.tensor([[stats.gram[k].yty, stats.gram[k].tokens] for k in keys], dtype=torch.float64, device=dev)
        reduce_to_root_(scalars)
        for k, (yty, count) in zip(keys, scalars.tolist()):
            stats.gram[k].yty, stats.gram[k].tokens = yty, int(round(count))
    if dist.get_rank() != 0:
        stats.gram = {}  # only rank 0 applies methods
    stats.sequences, stats.tokens, stats.seconds = sequences, tokens, max_over_ranks(stats.seconds)
