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
in files (:class:`~replaceme.offload.window.DiskStore`) read back one batch at a
time, so memory holds one layer and one batch's window whatever the number of
calibration tokens.
The loop itself is the engine's (:func:`replaceme.offload.engine.stream`, shared
with scoring, perplexity and lm-eval); this module supplies its feed: where the
boundaries wait, the MLP outputs and the call arguments kept for the methods.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from replaceme.calibration import CalibrationData
from replaceme.offload.engine import Feed, hidden_argument, stream
from replaceme.offload.skeleton import OffloadedModel
from replaceme.stats.collect import (
    Accumulator,
    BatchState,
    batch_keep,
    bind_arguments,
    check_gram_blocks,
    complete_pass,
    held_out,
    plan_batches,
    portable_kwargs,
)
from replaceme.stats.request import StatsRequest
from replaceme.stats.store import ActivationSample, ActivationStats, BatchActivations

log = logging.getLogger(__name__)


def collect_stats_layerwise(offloaded: OffloadedModel, calib: CalibrationData, request: StatsRequest, *,
                            holdout_tokens: int = 8192, spill: Any = None,
                            stats_device: str | torch.device | None = None,
                            batches: Sequence[int] | None = None) -> ActivationStats:
    """Run the shared statistics pass layer by layer over an offloaded model.

    Args:
        offloaded: the skeleton over its checkpoint (no layer materialised).
        calib: tokenised calibration batches.
        request: the union of what every method of the run needs.
        holdout_tokens: token budget of the held-out batches.
        spill: a :class:`~replaceme.stats.spill.Spill`: the activation sample goes to
            memory-mapped files under its directory (default: CPU memory).
        stats_device: where the float64 Gram sums live (default: the compute device).
        batches: the calibration batches to run (default: all; a data-parallel job
            passes each process its shard, see :func:`~replaceme.stats.collect.collect_stats`).

    The activations of every calibration token that wait between layers (a few
    boundaries) always go to files (:class:`~replaceme.offload.window.DiskStore`, in the
    system temporary directory or beside ``spill``'s) and are read back one batch at
    a time, so memory does not grow with the calibration set; when they would exceed
    the disk budget (``offloaded.disk_budget``), the layers are streamed once per group
    of batches that fits (:mod:`replaceme.offload.budget`).

    Returns:
        The same :class:`ActivationStats` as the hooked pass on the loaded model.
    """
    from replaceme.offload.window import DiskStore

    with DiskStore(spill.path.parent if spill is not None else None) as window:
        return _collect_layerwise(offloaded, calib, request, holdout_tokens=holdout_tokens, spill=spill,
                                  stats_device=stats_device, window=window,
                                  batches=range(calib.num_batches) if batches is None else batches)


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
    batches: Sequence[int] = (),
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
    stats = ActivationStats(num_layers=L, hidden_size=hidden, **held_out(calib, holdout))

    states: dict[int, BatchState] = {}
    keeps: dict[int, BatchActivations] = {}
    for b in batches:
        mask = calib.masks[b].to(device)
        keep = batch_keep(calib, b, request, kept_batches)
        if keep is not None:
            keeps[b] = keep
        states[b] = acc.begin(mask, use_for_gram=b not in holdout_set, keep=keep, store=store)

    feed = _StatsFeed(acc, states, set(request.layer_kwargs), model, adapter)
    batches = list(batches)
    # per batch on disk between layers: the accumulator's window of boundaries and MLP outputs
    element = torch.empty((), dtype=offloaded.dtype).element_size()
    per_batch = [calib.input_ids[b].numel() * hidden * element * (2 * acc.window + 3) for b in batches]
    groups = offloaded.window_groups(per_batch, "statistics", getattr(window, "path", None))
    for number, group in enumerate(groups, 1):
        chosen = [batches[k] for k in group]
        label = "calibration pass (layer by layer)" + (f", sweep {number}/{len(groups)}" if len(groups) > 1 else "")
        stream(offloaded, model, [(calib.input_ids[b], calib.masks[b]) for b in chosen], feed, description=label,
               indices=chosen)
        for b in chosen:  # this group's window is no longer needed
            states[b].x.clear()
            states[b].m.clear()
    return complete_pass(acc, stats, keeps, holdout, sample, start_time)


class _StatsFeed(Feed):
    """The engine's feed for the statistics pass: the accumulator keeps the window of
    boundaries its sums need (in files), catches MLP outputs with a hook, and keeps
    the call arguments of the layers a method replays."""

    def __init__(self, acc: Accumulator, states: dict[int, BatchState], want_kwargs: set[int], model: Any,
                 adapter: Any):
        self.acc, self.states, self.want_kwargs = acc, states, want_kwargs
        self.model, self.adapter = model, adapter
        self.current: BatchState | None = None
        self.handle = None

    def boundary(self, b: int, j: int, x: torch.Tensor) -> None:
        self.acc.boundary(self.states[b], j, x)
        self.acc.check_finite(self.states[b])

    def input(self, b: int, j: int) -> Any:
        return self.states[b].x[j]

    def enter_layer(self, j: int, layer: Any) -> None:
        if j in self.acc.mlp_needed:
            self.handle = self.adapter.mlp_residual(self.model, j).register_forward_hook(
                lambda mod, args, out: self.acc.mlp_output(self.current, j, out))

    def leave_layer(self, j: int) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def before_call(self, b: int, j: int, layer: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        state = self.current = self.states[b]
        if state.keep is not None and j in self.want_kwargs:
            signature = inspect.signature(type(layer).forward)
            bound = bind_arguments(signature, (layer, *args), kwargs)
            bound.pop("self", None)
            bound.pop(hidden_argument(layer), None)
            state.keep.layer_kwargs[j] = portable_kwargs(bound)
