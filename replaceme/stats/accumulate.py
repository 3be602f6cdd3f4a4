"""The running sums of the statistics pass (:class:`Accumulator`), fed boundary states and
MLP outputs by either pass: the hooked whole-model one (:mod:`replaceme.stats.collect`)
and the layer-by-layer one (:mod:`replaceme.stats.layerwise`). Float64 throughout; pad
positions never enter a sum; NaN/Inf are detected and named."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from replaceme.errors import ReplacemeError
from replaceme.stats.request import StatsRequest
from replaceme.stats.store import ActivationStats, BatchActivations, GramKey, GramSums


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
