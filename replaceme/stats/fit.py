"""Does a set of statistics fit a model and a request? (checked before a cache entry is trusted)

A statistics cache is a shared folder: an entry found under the right key may still
hold another model's statistics (copied, or planted by whoever can write the folder).
:func:`misfit` compares what the entry holds with the facts of the model at hand
(its layer count and hidden size) and with what the run asked for, so that such an
entry is refused, with the reason, instead of steering the prune. It cannot tell two
models of the same shape apart: that is the key's job (it hashes the weights).
"""

from __future__ import annotations

from typing import Any

import torch

from replaceme.stats.request import StatsRequest
from replaceme.stats.store import ActivationStats, BatchActivations, GramKey


def misfit(stats: ActivationStats, num_layers: int, hidden_size: int, request: StatsRequest | None = None) -> str | None:
    """The first way ``stats`` disagrees with a model of ``num_layers`` layers of width
    ``hidden_size`` (and with ``request``, if given), or None when they fit."""
    L, h = num_layers, hidden_size
    if stats.num_layers != L or stats.hidden_size != h:
        return (f"statistics of a model with {stats.num_layers} layers of width {stats.hidden_size}, "
                f"this one has {L} of width {h}")
    for name, table in (("angular", stats.angular), ("token_cosine", stats.token_cosine)):
        for n, values in table.items():
            if not isinstance(n, int) or not 1 <= n <= L:
                return f"{name} distances for block size {n!r}, outside a model of {L} layers"
            if _shape(values) != (L - n + 1,):
                return f"{name} distances for block size {n} of shape {_shape(values)}, expected ({L - n + 1},)"
    for key, sums in stats.gram.items():
        start, end = key[0], key[1]
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= L):
            return f"Gram sums for block {start}..{end}, outside a model of {L} layers"
        for part in ("xtx", "xty"):
            if _shape(getattr(sums, part)) != (h, h):
                return f"Gram {part} of block {start}..{end} of shape {_shape(getattr(sums, part))}, expected ({h}, {h})"
    for where, batches in (("train", stats.sample.train), ("holdout", stats.sample.holdout)):
        for batch in batches:
            problem = _batch_misfit(batch, L, h)
            if problem:
                return f"{where} sample: {problem}"
    return _missing(stats, L, request) if request is not None else None


def _missing(stats: ActivationStats, L: int, request: StatsRequest) -> str | None:
    """What ``request`` asks for that ``stats`` lacks (a pass of this request always holds it)."""
    for n in sorted(request.block_sizes):
        if 1 <= n <= L and (n not in stats.angular or n not in stats.token_cosine):
            return f"no distances for block size {n}"
    variants = (False, True) if request.gram_with_pad else (False,)
    for start, end in sorted(request.gram_blocks):
        for pad in variants:
            if GramKey(start, end, pad) not in stats.gram:
                return f"no Gram sums for block {start}..{end}"
    for batch in stats.sample.train + stats.sample.holdout:
        lacking = (set(request.sample_boundaries) - set(batch.boundaries)) | (set(request.sample_mlp) - set(batch.mlp))
        if lacking:
            return f"a sampled batch lacks the states {sorted(lacking)[:3]}"
    return None


def _batch_misfit(batch: BatchActivations, L: int, h: int) -> str | None:
    shape = _shape(batch.mask)
    if len(shape) != 2:
        return f"a mask of shape {shape}, expected [batch, tokens]"
    for name, states, top in (("boundary", batch.boundaries, L), ("MLP output", batch.mlp, L - 1)):
        for index, tensor in states.items():
            if not isinstance(index, int) or not 0 <= index <= top:
                return f"a {name} {index!r} outside a model of {L} layers"
            if _shape(tensor) != (*shape, h):
                return f"{name} {index} of shape {_shape(tensor)}, expected {(*shape, h)}"
    return None


def _shape(value: Any) -> tuple[int, ...] | str:
    """The shape of a tensor, or the name of what it is instead."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
