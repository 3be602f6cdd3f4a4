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
from typing import Any

import torch

from replaceme.adapters import ModelAdapter
from replaceme.calibration import CalibrationData
from replaceme.console import track
from replaceme.errors import ReplacemeError
from replaceme.stats.request import StatsRequest
from replaceme.stats.store import ActivationSample, ActivationStats, BatchActivations, GramSums

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the last layer's hook: nothing after it is needed."""


def split_batches(
    calib: CalibrationData, sample_tokens: int, holdout_tokens: int, seed: int
) -> tuple[list[int], list[int]]:
    """Choose held-out batches and the ordered training sample, deterministically.

    Held out: a seeded choice of at most ``num_batches // 10`` batches holding at
    most ``holdout_tokens`` tokens (none with fewer than 10 batches). Sample: the
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
    for b in order[: calib.num_batches // 10 if holdout_tokens > 0 else 0]:
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


def _portable_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in kwargs.items():
        if key in ("hidden_states", "past_key_values", "past_key_value", "layer_past", "use_cache", "output_attentions"):
            continue
        try:
            out[key] = _to_cpu(value)
        except TypeError:
            log.debug("layer kwarg %s of type %s not kept in the sample", key, type(value).__name__)
    return out


def _bind(signature: inspect.Signature, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
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


def _last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True of each row of ``mask [B, T]`` (any padding side)."""
    width = mask.shape[1]
    return width - 1 - torch.argmax(mask.flip(1).to(torch.int8), dim=1)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine in float64: ``[..., h] × [..., h] -> [...]``."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


class _Accumulator:
    """Consumes boundary states and MLP outputs of one batch at a time."""

    def __init__(self, num_layers: int, hidden: int, request: StatsRequest, stats_device: torch.device,
                 model_device: torch.device):
        self.L = num_layers
        self.request = request
        self.sizes = sorted(n for n in request.block_sizes if 1 <= n <= num_layers)
        self.window = max([1, *self.sizes, *(e - s for s, e in request.gram_blocks)])
        self.device = stats_device
        # sums stay on the model's device: no host sync per block size and batch
        zeros_on_model = lambda size: torch.zeros(size, dtype=torch.float64, device=model_device)  # noqa: E731
        self.angular_sum = {n: zeros_on_model(num_layers - n + 1) for n in self.sizes}
        self.cosine_sum = {n: zeros_on_model(num_layers - n + 1) for n in self.sizes}
        self.sequences = 0
        self.tokens = 0
        self.gram_starts = sorted({s for s, _ in request.gram_blocks})
        self.gram_variants = [False, True] if request.gram_with_pad else [False]
        zeros = lambda: torch.zeros(hidden, hidden, dtype=torch.float64, device=stats_device)  # noqa: E731
        self.xtx = {(s, p): zeros() for s in self.gram_starts for p in self.gram_variants}
        self.xty = {(s, e, p): zeros() for s, e in request.gram_blocks for p in self.gram_variants}
        self.yty = {(s, e, p): torch.zeros((), dtype=torch.float64, device=stats_device)
                    for s, e in request.gram_blocks for p in self.gram_variants}
        self.gram_tokens = {p: 0 for p in self.gram_variants}
        self.mlp_needed = {s - 1 for s in self.gram_starts} | set(request.sample_mlp)

    def begin(self, mask: torch.Tensor, use_for_gram: bool, keep: BatchActivations | None) -> None:
        self.mask = mask
        self.last = _last_token_index(mask)
        self.use_for_gram = use_for_gram
        self.keep = keep
        self.x: dict[int, torch.Tensor] = {}
        self.m: dict[int, torch.Tensor] = {}
        tokens = int(mask.sum())
        self.sequences += mask.shape[0]
        self.tokens += tokens
        if use_for_gram:
            self.gram_tokens[False] += tokens
            if True in self.gram_tokens:
                self.gram_tokens[True] += mask.numel()

    def mlp_output(self, i: int, m: torch.Tensor) -> None:
        if i in self.mlp_needed:
            m = m.detach().reshape(*self.mask.shape, -1)  # some models (OPT) flatten tokens in the MLP
            self.m[i] = m
            if self.keep is not None and i in self.request.sample_mlp:
                self.keep.mlp[i] = m.to("cpu", copy=True)

    def boundary(self, j: int, x: torch.Tensor) -> None:
        x = x.detach()
        if not torch.isfinite(x[self.mask]).all():
            raise ReplacemeError(
                f"non-finite hidden states (NaN/Inf) entering layer {j} on calibration data; "
                "the model may overflow in this dtype (try --dtype float32)"
            )
        rows = torch.arange(x.shape[0], device=x.device)
        x64 = x.to(torch.float64)  # once per boundary, shared by every block size
        for n in self.sizes:
            s = j - n
            if s < 0:
                continue
            xs = self.x[s]
            cos_last = _cosine(xs[rows, self.last], x64[rows, self.last]).clamp(-1.0, 1.0)
            self.angular_sum[n][s] += (torch.arccos(cos_last) / math.pi).sum()
            self.cosine_sum[n][s] += _cosine(xs, x64)[self.mask].sum()
        if self.use_for_gram:
            self._gram(j, x)
        if self.keep is not None and j in self.request.sample_boundaries:
            self.keep.boundaries[j] = x.to("cpu", copy=True)
        self.x[j] = x
        self.x.pop(j - self.window - 1, None)
        self.m.pop(j - self.window - 2, None)

    def _gram(self, j: int, x: torch.Tensor) -> None:
        for with_pad in self.gram_variants:
            sel = torch.ones_like(self.mask) if with_pad else self.mask
            if j in self.gram_starts:  # X = m_{j-1} is complete once x_j exists
                X = self.m[j - 1][sel].to(self.device, torch.float64)
                self.xtx[(j, with_pad)].addmm_(X.T, X)
            for s, e in self.request.gram_blocks:
                if e != j:
                    continue
                X = self.m[s - 1][sel].to(self.device, torch.float64)
                Y = x[sel].to(self.device, torch.float64) - self.x[s][sel].to(self.device, torch.float64) + X
                self.xty[(s, e, with_pad)].addmm_(X.T, Y)
                self.yty[(s, e, with_pad)] += (Y * Y).sum()

    def finish(self, stats: ActivationStats) -> None:
        for n in self.sizes:
            stats.angular[n] = self.angular_sum[n].cpu() / max(self.sequences, 1)
            stats.token_cosine[n] = self.cosine_sum[n].cpu() / max(self.tokens, 1)
        for (s, e, with_pad), xty in self.xty.items():
            key = (s, e, "with_pad") if with_pad else (s, e)
            stats.gram[key] = GramSums(
                xtx=self.xtx[(s, with_pad)], xty=xty, yty=float(self.yty[(s, e, with_pad)]), tokens=self.gram_tokens[with_pad]
            )
        stats.sequences = self.sequences
        stats.tokens = self.tokens


@torch.no_grad()
def collect_stats(
    model: Any,
    adapter: ModelAdapter,
    calib: CalibrationData,
    request: StatsRequest,
    *,
    holdout_tokens: int = 8192,
    stats_device: str | torch.device | None = None,
) -> ActivationStats:
    """Run the shared statistics pass.

    Args:
        model: the unpruned model, already on its compute device.
        adapter: architecture facts for ``model``.
        calib: tokenised calibration batches.
        request: the union of what every method of the run needs.
        holdout_tokens: token budget of the held-out batches (see :func:`split_batches`).
        stats_device: where float64 Gram sums live (default: the model's device).

    Returns:
        The :class:`ActivationStats`.
    """
    start_time = time.perf_counter()
    layers = adapter.layers(model)
    L = len(layers)
    hidden = int(model.config.hidden_size)
    device = next(model.parameters()).device
    stats_device = torch.device(stats_device) if stats_device is not None else device
    for s, e in request.gram_blocks:
        if s < 1:
            raise ReplacemeError(f"block [{s}, {e}) starts at layer 0: there is no MLP before it to fold a map into")
    acc = _Accumulator(L, hidden, request, stats_device, device)
    holdout, sample = split_batches(
        calib, request.sample_tokens if request.wants_sample else 0, holdout_tokens if request.wants_sample or request.gram_blocks else 0, calib.spec.seed
    )
    if not request.wants_sample:
        sample = []
    stats = ActivationStats(num_layers=L, hidden_size=hidden)
    kept: dict[int, BatchActivations] = {}
    want_kwargs = set(request.layer_kwargs)

    def pre_hook(index: int):
        signature = inspect.signature(layers[index].forward)

        def hook(module, args, kwargs):
            arguments = _bind(signature, args, kwargs)
            first = next(iter(arguments))
            acc.boundary(index, arguments[first])
            if acc.keep is not None and index in want_kwargs:
                acc.keep.layer_kwargs[index] = _portable_kwargs({k: v for k, v in arguments.items() if k != first})

        return hook

    def last_hook(module, args, output):
        acc.boundary(L, output[0] if isinstance(output, tuple) else output)
        raise _StopForward

    def mlp_hook(index: int):
        def hook(module, args, output):
            acc.mlp_output(index, output)

        return hook

    handles = [layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(layers[L - 1].register_forward_hook(last_hook))
    handles += [adapter.mlp_out(model, i).register_forward_hook(mlp_hook(i)) for i in sorted(acc.mlp_needed) if 0 <= i < L]
    holdout_set, sample_set = set(holdout), set(sample)
    try:
        for b in track(range(calib.num_batches), "calibration pass"):
            mask = calib.masks[b].to(device)
            keep = BatchActivations(mask=calib.masks[b].clone(), input_ids=calib.input_ids[b].clone()) if (b in holdout_set or b in sample_set) and request.wants_sample else None
            acc.begin(mask, use_for_gram=b not in holdout_set, keep=keep)
            try:
                model(input_ids=calib.input_ids[b].to(device), attention_mask=mask.long(), use_cache=False)
            except _StopForward:
                pass
            if keep is not None:
                kept[b] = keep
    finally:
        for h in handles:
            h.remove()
    acc.finish(stats)
    stats.sample = ActivationSample(train=[kept[b] for b in sample if b in kept], holdout=[kept[b] for b in holdout if b in kept])
    stats.seconds = time.perf_counter() - start_time
    return stats
