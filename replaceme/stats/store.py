"""Containers for what the shared pass measured.

Notation (GUIDE §3): layers ``0..L-1``; ``x_j`` is the input of layer ``j``
(``x_0`` the embedding output, ``x_L`` the last layer's output before the final
norm); ``m_i`` is the output of layer ``i``'s MLP before its residual add.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from replaceme.plan import Block
from replaceme.stats.request import StatsRequest


@dataclass
class BatchActivations:
    """Activations of one calibration batch kept in the sample.

    Attributes:
        mask: ``[B, T]`` bool, False at pad positions.
        input_ids: ``[B, T]`` token ids, so the batch can be run again through a
            partly pruned model (block-by-block refitting).
        boundaries: ``j -> x_j``, each ``[B, T, hidden]`` (model dtype, CPU).
        mlp: ``i -> m_i``, each ``[B, T, hidden]``.
        layer_kwargs: ``i -> kwargs`` layer ``i`` was called with (tensors on CPU),
            so a layer can be re-run on ``x_i`` alone.
    """

    mask: torch.Tensor
    input_ids: torch.Tensor | None = None
    boundaries: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp: dict[int, torch.Tensor] = field(default_factory=dict)
    layer_kwargs: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())

    def nbytes(self) -> int:
        tensors = list(self.boundaries.values()) + list(self.mlp.values())
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class ActivationSample:
    """Whole calibration batches whose activations were kept (bounded by a token budget).

    Attributes:
        train: batches in a seeded order; a method with a smaller budget takes a prefix.
        holdout: held-out batches, never used to fit anything (they are also
            excluded from the Gram sums); for validation and diagnostics.
        train_positions, holdout_positions: the position of each batch in the whole
            pass's order, so that the shards of a data-parallel pass are put back in it
            (:func:`replaceme.distributed.gather_sample`); empty when not recorded.
    """

    train: list[BatchActivations] = field(default_factory=list)
    holdout: list[BatchActivations] = field(default_factory=list)
    train_positions: list[int] = field(default_factory=list)
    holdout_positions: list[int] = field(default_factory=list)

    def take(self, token_budget: int) -> list[BatchActivations]:
        """The prefix of ``train`` holding at most ``token_budget`` tokens (at least one batch)."""
        out, total = [], 0
        for batch in self.train:
            if out and total + batch.tokens > token_budget:
                break
            out.append(batch)
            total += batch.tokens
        return out

    def nbytes(self) -> int:
        return sum(b.nbytes() for b in self.train + self.holdout)

    @staticmethod
    def tokens_of(batches: list[BatchActivations], key: str, index: int) -> torch.Tensor:
        """Stack the non-pad tokens of ``boundaries``/``mlp`` ``index`` over batches: ``[N, hidden]``."""
        return torch.cat([getattr(b, key)[index][b.mask] for b in batches], dim=0)


class GramKey(NamedTuple):
    """Which Gram sums: block ``[start, end)``, with pad tokens included or not."""

    start: int
    end: int
    with_pad: bool = False

    @classmethod
    def of(cls, block: Block, with_pad: bool = False) -> GramKey:
        return cls(block.start, block.end, with_pad)


@dataclass
class GramSums:
    """Normal-equation sums for one block, float64 (ReplaceMe, arXiv 2505.02819, eq. 4).

    ``xtx = Σ XᵀX`` and ``xty = Σ XᵀY`` over calibration tokens, with
    ``X = m_{s-1}`` and ``Y = x_e − x_s + m_{s-1}``; both ``[hidden, hidden]``.
    ``yty`` (the trace of ``YᵀY``) gives residual norms without another pass.
    """

    xtx: torch.Tensor
    xty: torch.Tensor
    yty: float
    tokens: int


@dataclass
class ActivationStats:
    """Everything the shared pass measured, for every method of a run.

    Attributes:
        num_layers: L.
        hidden_size: width of the residual stream.
        angular: ``n -> [L-n+1]`` float64, mean angular distance
            ``arccos(cos(x_s, x_{s+n}))/π`` on the last non-pad token of each
            sequence, for every start ``s``.
        token_cosine: ``n -> [L-n+1]`` float64, mean per-token cosine of
            ``x_s`` and ``x_{s+n}`` over all non-pad tokens.
        gram: :class:`GramKey` ``(s, e, with_pad)`` -> :class:`GramSums`; pad tokens are
            excluded unless ``with_pad`` (requested with ``gram_with_pad``).
        sample: the kept activations, if any method asked.
        sequences, tokens: how much calibration data went in (non-pad tokens).
        holdout_batches, holdout_tokens: the calibration batches (and their non-pad tokens)
            held out of every fit, whether or not their activations were kept.
        seconds: wall time of the pass.
        work_bytes: what the run's memory budget leaves beside these statistics for the
            compensators' working memory (None: unbounded; set by the orchestration).
    """

    num_layers: int
    hidden_size: int
    angular: dict[int, torch.Tensor] = field(default_factory=dict)
    token_cosine: dict[int, torch.Tensor] = field(default_factory=dict)
    gram: dict[GramKey, GramSums] = field(default_factory=dict)
    sample: ActivationSample = field(default_factory=ActivationSample)
    sequences: int = 0
    tokens: int = 0
    seconds: float = 0.0
    holdout_batches: int = 0
    holdout_tokens: int = 0
    work_bytes: int | None = None

    def block_distance(self, block: Block, kind: str = "angular") -> float:
        table = self.angular if kind == "angular" else self.token_cosine
        return float(table[block.size][block.start])

    @property
    def block_influence(self) -> torch.Tensor:
        """Per-layer block influence (ShortGPT): ``1 − mean token cos(x_i, x_{i+1})``, ``[L]``."""
        return 1.0 - self.token_cosine[1]

    def gram_for(self, block: Block, with_pad: bool = False) -> GramSums:
        key = GramKey.of(block, with_pad)
        if key not in self.gram:
            raise KeyError(f"no Gram sums for block {block} (with_pad={with_pad}); the stats request missed it")
        return self.gram[key]

    def keep_only(self, request: StatsRequest) -> None:
        """Drop the Gram sums and the sample tensors ``request`` does not ask for (what no
        later user reads); the distance tables and token counts stay."""
        self.gram = {k: g for k, g in self.gram.items() if (k.start, k.end) in request.gram_blocks}
        for batch in (*self.sample.train, *self.sample.holdout):
            batch.boundaries = {j: x for j, x in batch.boundaries.items() if j in request.sample_boundaries}
            batch.mlp = {i: m for i, m in batch.mlp.items() if i in request.sample_mlp}
            batch.layer_kwargs = {i: k for i, k in batch.layer_kwargs.items() if i in request.layer_kwargs}

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held: float64 Gram sums (``XᵀX`` shared by blocks with the same start
        counted once), the activation sample, and the number of Gram blocks."""
        unique = {id(t): t for g in self.gram.values() for t in (g.xtx, g.xty)}
        gram = sum(t.numel() * t.element_size() for t in unique.values())
        return {"gram": gram, "gram_blocks": len(self.gram), "sample": self.sample.nbytes()}
