"""The statistics pass one decoder layer at a time (``prune --offload``, GUIDE §5).

The same statistics as :func:`replaceme.stats.collect.collect_stats`, computed by
the same :class:`~replaceme.stats.collect.Accumulator`, in the transposed order:

```
x_0 of every batch (embedding rows read from the checkpoint)
for j in 0..L-1:
    load layer j on the device
    for every batch b: x_{j+1} = layer_j(x_j, kwargs_j)   (m_j caught by a hook)
                       accumulator.boundary(b, j+1, x_{j+1})
    free layer j
```

Between layers, every batch's window of boundary states (the last ``n + 1``
boundaries for blocks of ``n`` layers) and the MLP outputs still needed are kept
in files (:class:`~replaceme.stats.spill.DiskStore`) read back one batch at a
time, so memory holds one layer and one batch's window whatever the number of
calibration tokens.
The call arguments of layer j (attention mask, position embeddings, ...) come
from the model's own forward run on the skeleton with every layer stubbed
(:meth:`~replaceme.offload.OffloadedModel.layer_call`), so nothing
architecture-specific is written here.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

import torch

from replaceme import distributed
from replaceme.calibration import CalibrationData
from replaceme.console import track
from replaceme.offload import OffloadedModel
from replaceme.stats.collect import (
    Accumulator,
    BatchState,
    batch_keep,
    bind_arguments,
    check_gram_blocks,
    complete_pass,
    plan_batches,
    portable_kwargs,
)
from replaceme.stats.request import StatsRequest
from replaceme.stats.store import ActivationSample, ActivationStats, BatchActivations

log = logging.getLogger(__name__)


def _with_hidden(args: tuple, kwargs: dict[str, Any], first: str, x: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, first: x}


def collect_stats_layerwise(offloaded: OffloadedModel, calib: CalibrationData, request: StatsRequest, *,
                            holdout_tokens: int = 8192, spill: Any = None,
                            stats_device: str | torch.device | None = None) -> ActivationStats:
    """Run the shared statistics pass layer by layer over an offloaded model.

    Args:
        offloaded: the skeleton over its checkpoint (no layer materialised).
        calib: tokenised calibration batches.
        request: the union of what every method of the run needs.
        holdout_tokens: token budget of the held-out batches.
        spill: a :class:`~replaceme.stats.spill.Spill`: the activation sample goes to
            memory-mapped files under its directory (default: CPU memory).
        stats_device: where the float64 Gram sums live (default: the compute device).

    The activations of every calibration token that wait between layers (a few
    boundaries) always go to files (:class:`~replaceme.stats.spill.DiskStore`, in the
    system temporary directory or beside ``spill``'s) and are read back one batch at
    a time, so memory does not grow with the calibration set.

    Returns:
        The same :class:`ActivationStats` as the hooked pass on the loaded model.
    """
    from replaceme.stats.spill import DiskStore

    with DiskStore(spill.path.parent if spill is not None else None) as window:
        return _collect_layerwise(offloaded, calib, request, holdout_tokens=holdout_tokens, spill=spill,
                                  stats_device=stats_device, window=window)


@torch.no_grad()
def _collect_layerwise(
    offloaded: OffloadedModel,
    calib: CalibrationData,
    request: StatsRequest,
    *,
    holdout_tokens: int = 8192,
    spill: Any = None,
    stats_device: str | torch.device | None = None,
    window: Any = None,
) -> ActivationStats:
    """The body of :func:`collect_stats_layerwise` (``window``: where activations
    wait between layers)."""
    start_time = time.perf_counter()
    model, adapter, device = offloaded.model, offloaded.adapter, offloaded.device
    L = offloaded.num_layers
    hidden = int(model.config.hidden_size)
    check_gram_blocks(request)
    acc = Accumulator(L, hidden, request, torch.device(stats_device) if stats_device else device, device,
                      sample_store=spill)
    holdout, sample = plan_batches(calib, request, holdout_tokens)
    holdout_set, kept_batches = set(holdout), set(holdout) | set(sample)
    store = window
    want_kwargs = set(request.layer_kwargs)
    stats = ActivationStats(num_layers=L, hidden_size=hidden)

    states: list[BatchState] = []
    keeps: dict[int, BatchActivations] = {}
    signature = inspect.signature(type(adapter.layers(model)[0]).forward)
    first = next(n for n in signature.parameters if n != "self")
    batches = distributed.local_batches(calib.num_batches)  # under torchrun: this rank's shard
    for b in batches:
        mask = calib.masks[b].to(device)
        keep = batch_keep(calib, b, request, kept_batches)
        if keep is not None:
            keeps[b] = keep
        states.append(acc.begin(mask, use_for_gram=b not in holdout_set, keep=keep, store=store))

    bar = track(range(L), "calibration pass (layer by layer)")
    error = None
    try:
        _layer_by_layer(offloaded, calib, acc, batches, states, want_kwargs, signature, first, bar)
    except Exception as exc:  # shared with the other ranks of a torchrun job, then re-raised
        error = exc
    return complete_pass(acc, stats, keeps, holdout, sample, error, start_time)


def _layer_by_layer(offloaded: OffloadedModel, calib: CalibrationData, acc: Accumulator, batches: Any,
                    states: list[BatchState], want_kwargs: set[int], signature: Any, first: str, bar: Any) -> None:
    model, adapter, device = offloaded.model, offloaded.adapter, offloaded.device
    hidden = int(model.config.hidden_size)
    returns_tuple = False
    for j in bar:
        layer = offloaded.load_layer(j)
        handle = None
        if j in acc.mlp_needed:
            current: list[BatchState] = []
            handle = adapter.mlp_residual(model, j).register_forward_hook(
                lambda mod, args, out: acc.mlp_output(current[0], j, out)
            )
        try:
            for b, state in zip(batches, states):
                ids, mask = calib.input_ids[b].to(device), calib.masks[b].to(device)
                if j == 0:
                    embeds = offloaded.embed(ids)
                else:
                    embeds = torch.zeros((*ids.shape, hidden), dtype=offloaded.dtype, device=device)
                args, kwargs = offloaded.layer_call(j, embeds, mask.long(), returns_tuple)
                if j == 0:
                    x = args[0] if args else kwargs[first]
                    acc.boundary(state, 0, x)
                    acc.check_finite(state)
                else:
                    x = state.x[j].to(device)
                del embeds
                if state.keep is not None and j in want_kwargs:
                    bound = bind_arguments(signature, (layer, *args), kwargs)
                    bound.pop("self", None)
                    bound.pop(first, None)
                    state.keep.layer_kwargs[j] = portable_kwargs(bound)
                args, kwargs = _with_hidden(args, kwargs, first, x)
                if handle is not None:
                    current[:] = [state]
                out = layer(*args, **kwargs)
                returns_tuple = isinstance(out, tuple)
                acc.boundary(state, j + 1, out[0] if returns_tuple else out)
                acc.check_finite(state)
                del out, args, kwargs, x
        finally:
            if handle is not None:
                handle.remove()
            offloaded.free_layer(j)
