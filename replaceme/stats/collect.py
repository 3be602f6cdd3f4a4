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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from replaceme.adapters import ModelAdapter
from replaceme.calibration import CalibrationData
from replaceme.console import track
from replaceme.errors import ReplacemeError
from replaceme.stats.request import StatsRequest
from replaceme.stats.store import ActivationSample, ActivationStats, BatchActivations, GramKey, GramSums

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the last layer's hook: nothing after it is needed."""


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
    # the small epsilon keeps e.g. 30 × 0.1 at 3 despite binary rounding
    max_batches = math.floor(calib.num_batches * holdout_fraction + 1e-9) if holdout_tokens > 0 else 0
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


def _last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True of each row of ``mask [B, T]`` (any padding side)."""
    width = mask.shape[1]
    return width - 1 - torch.argmax(mask.flip(1).to(torch.int8), dim=1)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine in float64: ``[..., h] × [..., h] -> [...]``."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


@dataclass
class BatchState:
    """What the accumulator holds about one calibration batch while its boundaries arrive.

    Attributes:
        mask: ``[B, T]`` bool on the compute device.
        last: index of each row's last non-pad token, ``[B]``.
        use_for_gram: False for held-out batches (they never enter the Gram sums).
        keep: where the batch's sampled activations go, or None.
        x: ``j -> x_j`` of the rolling window (as returned by ``store``).
        m: ``i -> m_i`` of the rolling window.
        store: where window tensors are kept: identity in the hooked pass (one
            batch at a time, on the device); a copy to CPU or disk in the
            layer-by-layer pass, where every batch's window lives at once.
    """

    mask: torch.Tensor
    last: torch.Tensor
    use_for_gram: bool
    keep: BatchActivations | None
    x: dict[int, torch.Tensor] = field(default_factory=dict)
    m: dict[int, torch.Tensor] = field(default_factory=dict)
    store: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)
    #: whether ``store`` copies (else MLP outputs are cloned: a layer may add to its
    #: MLP output in place afterwards, as Falcon's parallel attention does)
    store_copies: bool = False
    #: no padding in the batch: token rows are a view (``reshape``), not a masked copy
    full: bool = False
    #: ``(j, sum of x_j over non-pad tokens)`` not yet checked for NaN/Inf (checked once per batch)
    checks: list = field(default_factory=list)

    def rows(self, t: torch.Tensor, with_pad: bool = False) -> torch.Tensor:
        """``[B, T, h] -> [tokens, h]``: the non-pad tokens (every token with ``with_pad``)."""
        if self.full or with_pad:
            return t.reshape(-1, t.shape[-1])
        return t[self.mask.to(t.device)]


class Accumulator:
    """Running sums of the statistics pass, fed boundary states and MLP outputs.

    Shared by the hooked whole-model pass (:func:`collect_stats`: one batch at a
    time, boundaries in order) and the layer-by-layer pass
    (:mod:`replaceme.stats.layerwise`: one layer at a time, every batch's
    :class:`BatchState` alive at once). For each batch, the boundaries ``x_j`` must
    arrive in increasing ``j``, and ``m_i`` before ``x_{i+1}``.
    """

    def __init__(self, num_layers: int, hidden: int, request: StatsRequest, stats_device: torch.device,
                 model_device: torch.device, sample_store: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.L = num_layers
        #: where sampled activations go: a CPU copy, or a file (:class:`~replaceme.stats.spill.Spill`)
        self.sample_store = sample_store or (lambda t: t.to("cpu", copy=True))
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

    def begin(self, mask: torch.Tensor, use_for_gram: bool, keep: BatchActivations | None,
              store: Callable[[torch.Tensor], torch.Tensor] | None = None) -> BatchState:
        """Start a batch (``mask`` on the compute device); returns its state."""
        state = BatchState(mask, _last_token_index(mask), use_for_gram, keep)
        if store is not None:
            state.store, state.store_copies = store, True
        tokens = int(mask.sum())
        state.full = tokens == mask.numel()
        self.sequences += mask.shape[0]
        self.tokens += tokens
        if use_for_gram:
            self.gram_tokens[False] += tokens
            if True in self.gram_tokens:
                self.gram_tokens[True] += mask.numel()
        return state

    def mlp_output(self, state: BatchState, i: int, m: torch.Tensor) -> None:
        """``m_i`` of the batch, any shape ``[..., hidden]`` (OPT flattens tokens)."""
        if i in self.mlp_needed:
            m = m.detach().reshape(*state.mask.shape, -1)
            state.m[i] = state.store(m) if state.store_copies else m.clone()
            if state.keep is not None and i in self.request.sample_mlp:
                state.keep.mlp[i] = self.sample_store(m)

    def boundary(self, state: BatchState, j: int, x: torch.Tensor) -> None:
        """``x_j`` of the batch, ``[B, T, hidden]`` on the compute device.

        Each tensor is converted to float64 once per boundary and shared by every
        block size and Gram block; no host synchronisation happens here (the
        NaN/Inf check is deferred to :meth:`check_finite`)."""
        x = x.detach()
        x64 = x.to(torch.float64)  # once per boundary, shared by every block size
        rows64 = state.rows(x64)
        state.checks.append((j, rows64.sum()))
        rows = torch.arange(x.shape[0], device=x.device)
        for n in self.sizes:
            s = j - n
            if s < 0:
                continue
            xs = state.x[s].to(x.device, torch.float64)
            cos_last = _cosine(xs[rows, state.last], x64[rows, state.last]).clamp(-1.0, 1.0)
            self.angular_sum[n][s] += (torch.arccos(cos_last) / math.pi).sum()
            self.cosine_sum[n][s] += _cosine(state.rows(xs), rows64).sum()
        if state.use_for_gram:
            self._gram(state, j, x64)
        if state.keep is not None and j in self.request.sample_boundaries:
            state.keep.boundaries[j] = self.sample_store(x)
        state.x[j] = state.store(x)
        state.x.pop(j - self.window - 1, None)
        state.m.pop(j - self.window - 2, None)

    def check_finite(self, state: BatchState) -> None:
        """Raise, naming the layer that produced them, if NaN/Inf reached a boundary of
        this batch since the last check (one host synchronisation)."""
        if not state.checks:
            return
        sums = torch.stack([total for _, total in state.checks])
        finite = torch.isfinite(sums).tolist()
        boundaries = [j for j, _ in state.checks]
        state.checks.clear()
        for j, ok in zip(boundaries, finite):
            if not ok:
                producer = "the embedding" if j == 0 else f"layer {j - 1}"
                raise ReplacemeError(
                    f"{producer} produced non-finite hidden states (NaN/Inf) on calibration data (input of layer {j}); "
                    "the model may overflow in this dtype (try --dtype float32)"
                )

    def _gram(self, state: BatchState, j: int, x64: torch.Tensor) -> None:
        ends = [(s, e) for s, e in self.request.gram_blocks if e == j]
        if j not in self.gram_starts and not ends:
            return
        f64 = lambda t: t.to(self.device, torch.float64)  # noqa: E731
        for with_pad in self.gram_variants:
            if j in self.gram_starts:  # X = m_{j-1} is complete once x_j exists
                X = f64(state.rows(state.m[j - 1].to(x64.device), with_pad))
                add_upper_gram(self.xtx[(j, with_pad)], X)
            if not ends:
                continue
            xe = f64(state.rows(x64, with_pad))
            for s, e in ends:
                X = f64(state.rows(state.m[s - 1].to(x64.device), with_pad))
                Y = xe - f64(state.rows(state.x[s].to(x64.device), with_pad)) + X
                self.xty[(s, e, with_pad)].addmm_(X.T, Y)
                flat = Y.reshape(-1)
                self.yty[(s, e, with_pad)] += torch.dot(flat, flat)

    def finish(self, stats: ActivationStats) -> None:
        for xtx in self.xtx.values():
            mirror_upper_gram(xtx)
        for n in self.sizes:
            stats.angular[n] = self.angular_sum[n].cpu() / max(self.sequences, 1)
            stats.token_cosine[n] = self.cosine_sum[n].cpu() / max(self.tokens, 1)
        for (s, e, with_pad), xty in self.xty.items():
            stats.gram[GramKey(s, e, with_pad)] = GramSums(
                xtx=self.xtx[(s, with_pad)], xty=xty, yty=float(self.yty[(s, e, with_pad)]), tokens=self.gram_tokens[with_pad]
            )
        stats.sequences = self.sequences
        stats.tokens = self.tokens


#: column width of the blocks of XᵀX computed by :func:`add_upper_gram`
GRAM_BLOCK = 512


def add_upper_gram(xtx: torch.Tensor, X: torch.Tensor, block: int = GRAM_BLOCK) -> None:
    """``xtx += XᵀX`` on the blocks on and above the diagonal only (a symmetric rank-k
    update in float64, as BLAS ``syrk``, which torch does not expose): for each column
    block ``c``, one product of the columns up to ``c``'s end with ``c``'s columns.
    With ``k`` blocks this is ``(k + 1) / 2k`` of a full product (3/4 at hidden 1024,
    9/16 at 4096); :func:`mirror_upper_gram` fills the rest once, at the end."""
    h = X.shape[1]
    if h <= block:
        xtx.addmm_(X.T, X)
        return
    for lo in range(0, h, block):
        hi = min(lo + block, h)
        xtx[:hi, lo:hi].addmm_(X[:, :hi].T, X[:, lo:hi])


def mirror_upper_gram(xtx: torch.Tensor, block: int = GRAM_BLOCK) -> None:
    """Copy the blocks above the diagonal that :func:`add_upper_gram` filled to those below it."""
    h = xtx.shape[0]
    for lo in range(block, h, block):
        hi = min(lo + block, h)
        xtx[lo:hi, :lo] = xtx[:lo, lo:hi].T


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
