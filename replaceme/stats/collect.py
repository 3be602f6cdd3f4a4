"""The one forward pass that feeds every method of a run.

Hooks on the decoder layers see each boundary state ``x_j`` as the forward pass
reaches it; a rolling window keeps only the last few boundaries (as many as the
largest block asked for), so memory does not grow with depth or with the number
of calibration tokens. From the window we accumulate, per batch:

- angular distances ``arccos(cos(x_s, x_{s+n}))/π`` on each sequence's last
  non-pad token (Gromov et al., arXiv 2403.17887; ReplaceMe §3.1),
- mean per-token cosine ``cos(x_s, x_{s+n})`` over non-pad tokens
  (LLM-Streamline, arXiv 2403.19135; n = 1 gives ShortGPT's block influence),
- the ReplaceMe normal equations ``XᵀX``, ``XᵀY`` in float64 for requested blocks,
- a bounded sample of whole batches of activations for iterative solvers.

A data-parallel job runs a shard of the batches in each process (``batches=``) and
combines the results afterwards; this module knows nothing of processes.

The forward pass stops after the last decoder layer (no final norm, no LM head):
``x_L`` is the last layer's output *before* the final norm. Note that the
ReplaceMe reference uses HF's ``hidden_states[-1]``, which is post-norm, for
blocks ending at L; our tables differ from it there on purpose.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import time
from collections.abc import Sequence
from typing import Any

import torch

from replaceme.adapters import ModelAdapter
from replaceme.calibration import CalibrationData
from replaceme.console import track
from replaceme.errors import ReplacemeError
from replaceme.stats.accumulate import (  # noqa: F401  (re-exported: the pass and its accumulator, one import)
    GRAM_BLOCK,
    Accumulator,
    BatchState,
    add_upper_gram,
    mirror_upper_gram,
)
from replaceme.stats.request import StatsRequest
from replaceme.stats.store import ActivationSample, ActivationStats, BatchActivations

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the last layer's hook: nothing after it is needed."""


def holdout_batch_count(num_batches: int, holdout_fraction: float) -> int:
    """The most batches a pass holds out of ``num_batches`` (``floor(num_batches × fraction)``;
    the small epsilon keeps e.g. 30 × 0.1 at 3 despite binary rounding). At least one is held
    out when this is at least 1 (the first is kept whatever its tokens)."""
    return math.floor(num_batches * holdout_fraction + 1e-9)


def split_batches(
    calib: CalibrationData, sample_tokens: int, holdout_tokens: int, seed: int, holdout_fraction: float = 0.1
) -> tuple[list[int], list[int]]:
    """Choose held-out batches and the ordered training sample, deterministically.

    Held out: a seeded choice of at most ``floor(num_batches × holdout_fraction)``
    batches (default 0.1: none with fewer than 10 batches) holding at most
    ``holdout_tokens`` tokens; ``holdout_fraction = 0`` holds out nothing. Sample: the
    other batches in a seeded order, the prefix fitting ``sample_tokens``.
    The choice depends only on the data, budgets and seed, so a method gets the
    same batches whatever other methods share the pass.
    """
    rng = random.Random(seed)
    order = list(range(calib.num_batches))
    rng.shuffle(order)
    tokens = [int(m.sum()) for m in calib.masks]
    holdout: list[int] = []
    total = 0
    max_batches = holdout_batch_count(calib.num_batches, holdout_fraction) if holdout_tokens > 0 else 0
    for b in order[:max_batches]:
        if holdout and total + tokens[b] > holdout_tokens:
            break
        holdout.append(b)
        total += tokens[b]
    rest = [b for b in order if b not in holdout]
    sample, total = [], 0
    for b in rest:
        if total >= sample_tokens:
            break
        sample.append(b)
        total += tokens[b]
    return holdout, sample


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, tuple) and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(v.detach().to("cpu") for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(type(value).__name__)


def portable_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in kwargs.items():
        if key in ("hidden_states", "past_key_values", "past_key_value", "layer_past", "use_cache", "output_attentions"):
            continue
        try:
            out[key] = _to_cpu(value)
        except TypeError:
            log.debug("layer kwarg %s of type %s not kept in the sample", key, type(value).__name__)
    return out


def bind_arguments(signature: inspect.Signature, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A layer call's arguments by name (positional ones too: GPT-2 passes its mask
    positionally), with ``**kwargs`` flattened; the first entry is the hidden states."""
    bound = signature.bind_partial(*args, **kwargs).arguments
    out: dict[str, Any] = {}
    for name, value in bound.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            out[name] = value
    return out


def check_gram_blocks(request: StatsRequest) -> None:
    for s, e in request.gram_blocks:
        if s < 1:
            raise ReplacemeError(f"block [{s}, {e}) starts at layer 0: there is no MLP before it to fold a map into")


def plan_batches(calib: CalibrationData, request: StatsRequest, holdout_tokens: int) -> tuple[list[int], list[int]]:
    """Held-out and sampled batches of a pass (see :func:`split_batches`); no sample unless
    asked. A hold-out asked for but too small to hold one batch is a warning."""
    fraction = calib.spec.holdout_fraction
    wanted = holdout_tokens if request.wants_sample or request.gram_blocks else 0
    holdout, sample = split_batches(calib, request.sample_tokens if request.wants_sample else 0, wanted,
                                    calib.spec.seed, holdout_fraction=fraction)
    if wanted and fraction > 0 and not holdout:
        log.warning("calibration: %d batch(es) are too few to hold any out at --holdout-fraction %g (it takes at least "
                    "%d); every batch is fitted on and there are no held-out diagnostics", calib.num_batches, fraction,
                    math.ceil(1 / fraction - 1e-9))
    return holdout, sample if request.wants_sample else []


def held_out(calib: CalibrationData, holdout: list[int]) -> dict[str, int]:
    """``holdout_batches`` and ``holdout_tokens`` of a pass (the same on every rank of a torchrun job)."""
    return {"holdout_batches": len(holdout), "holdout_tokens": sum(int(calib.masks[b].sum()) for b in holdout)}


def batch_keep(calib: CalibrationData, b: int, request: StatsRequest, kept_batches: set[int]) -> BatchActivations | None:
    """The container for batch ``b``'s sampled activations, if it is sampled or held out."""
    if b in kept_batches and request.wants_sample:
        return BatchActivations(mask=calib.masks[b].clone(), input_ids=calib.input_ids[b].clone())
    return None


@torch.no_grad()
def collect_stats(
    model: Any,
    adapter: ModelAdapter,
    calib: CalibrationData,
    request: StatsRequest,
    *,
    holdout_tokens: int = 8192,
    stats_device: str | torch.device | None = None,
    spill: Any = None,
    batches: Sequence[int] | None = None,
) -> ActivationStats:
    """Run the shared statistics pass.

    Args:
        model: the unpruned model, already on its compute device.
        adapter: architecture facts for ``model``.
        calib: tokenised calibration batches.
        request: the union of what every method of the run needs.
        holdout_tokens: token budget of the held-out batches (see :func:`split_batches`).
        stats_device: where float64 Gram sums live (default: the model's device).
        spill: a :class:`~replaceme.stats.spill.Spill` to keep the activation sample
            in memory-mapped files instead of RAM.
        batches: the calibration batches to run (default: all). A data-parallel job
            gives each process its shard and combines the results
            (:func:`replaceme.distributed.shared_pass`); the sample then holds this
            shard's kept batches, with their positions in the whole pass's order.

    Returns:
        The :class:`ActivationStats`.
    """
    start_time = time.perf_counter()
    layers = adapter.layers(model)
    L = len(layers)
    hidden = int(model.config.hidden_size)
    device = next(model.parameters()).device
    stats_device = torch.device(stats_device) if stats_device is not None else device
    check_gram_blocks(request)
    acc = Accumulator(L, hidden, request, stats_device, device, sample_store=spill)
    holdout, sample = plan_batches(calib, request, holdout_tokens)
    stats = ActivationStats(num_layers=L, hidden_size=hidden, **held_out(calib, holdout))
    kept: dict[int, BatchActivations] = {}
    want_kwargs = set(request.layer_kwargs)
    current: list[BatchState] = []

    def pre_hook(index: int):
        signature = inspect.signature(layers[index].forward)

        def hook(module, args, kwargs):
            state = current[0]
            arguments = bind_arguments(signature, args, kwargs)
            first = next(iter(arguments))
            acc.boundary(state, index, arguments[first])
            if state.keep is not None and index in want_kwargs:
                state.keep.layer_kwargs[index] = portable_kwargs({k: v for k, v in arguments.items() if k != first})

        return hook

    def last_hook(module, args, output):
        acc.boundary(current[0], L, output[0] if isinstance(output, tuple) else output)
        raise _StopForward

    def mlp_hook(index: int):
        def hook(module, args, output):
            acc.mlp_output(current[0], index, output)

        return hook

    handles = [layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(layers[L - 1].register_forward_hook(last_hook))
    handles += [adapter.mlp_residual(model, i).register_forward_hook(mlp_hook(i)) for i in sorted(acc.mlp_needed) if 0 <= i < L]
    holdout_set, kept_batches = set(holdout), set(holdout) | set(sample)
    try:
        for b in track(range(calib.num_batches) if batches is None else batches, "calibration pass"):
            mask = calib.masks[b].to(device)
            keep = batch_keep(calib, b, request, kept_batches)
            current[:] = [acc.begin(mask, use_for_gram=b not in holdout_set, keep=keep)]
            try:
                model(input_ids=calib.input_ids[b].to(device), attention_mask=mask.long(), use_cache=False)
            except _StopForward:
                pass
            acc.check_finite(current[0])
            if keep is not None:
                kept[b] = keep
    finally:
        for h in handles:
            h.remove()
        current.clear()
    return complete_pass(acc, stats, kept, holdout, sample, start_time)


def complete_pass(acc: Accumulator, stats: ActivationStats, kept: dict[int, BatchActivations], holdout: list[int],
                  sample: list[int], start_time: float) -> ActivationStats:
    """End a statistics pass (hooked or layer by layer): fill ``stats`` from the accumulator
    and the kept batches, in the sample's order (with each batch's position in that order,
    so that the shards of a data-parallel pass can be put back in it)."""
    acc.finish(stats)
    train = [i for i, b in enumerate(sample) if b in kept]
    held = [i for i, b in enumerate(holdout) if b in kept]
    stats.sample = ActivationSample(train=[kept[sample[i]] for i in train], holdout=[kept[holdout[i]] for i in held],
                                    train_positions=train, holdout_positions=held)
    stats.seconds = time.perf_counter() - start_time
    return stats
