"""What the statistics of a run will hold, known before the pass runs.

The formula (README, "Statistics memory"), for hidden size ``h``, the model's dtype
bytes ``d`` and a :class:`~replaceme.stats.request.StatsRequest`:

- Gram sums (float64, on ``--gram-device``): ``8·h²·(S + G)·P`` bytes, where ``S`` is
  the number of distinct block starts (``XᵀX`` is shared by the blocks starting at the
  same layer), ``G`` the number of blocks (one ``XᵀY`` each) and ``P`` 2 with
  ``mask_padding false`` (sums with and without pad tokens), else 1. With a distance
  selector, ``-n N`` and one block, one pass asks for every candidate:
  ``S = G = L − N`` (starts 1..L−N), ``16·h²·(L − N)``; two passes ask for the chosen
  block only: ``16·h²``.
- Activation sample (RAM, or ``--spill-dir`` files): ``k·(B·T)·h·d`` bytes for the
  ``B × T`` token slots of every kept batch (held-out batches up to ``holdout_tokens``
  and training batches up to the largest ``token_budget``) and ``k`` stored tensors per
  batch (boundaries ``x_j`` plus MLP outputs ``m_i``; one pass: those of every
  candidate block, two passes: of the chosen blocks only).
- Distance tables: ``16·(L + 1)`` bytes per block size (negligible).

Two passes (a distance pass, selection, then a pass for what the chosen blocks need,
as the ReplaceMe reference does) cost a second forward pass over the calibration set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from replaceme.stats.request import StatsRequest


@dataclass
class StatsEstimate:
    """Bytes the statistics of one pass will hold (see the module's formula).

    Attributes:
        gram_bytes: float64 ``XᵀX``/``XᵀY`` sums.
        sample_bytes: the activation sample (held-out and training batches).
        table_bytes: distance tables.
        gram_starts, gram_blocks: ``S`` and ``G`` of the formula.
        sample_tensors: ``k`` of the formula.
        sample_slots: ``Σ B·T`` over the kept batches.
        passes: forward passes over the calibration set.
    """

    gram_bytes: int
    sample_bytes: int
    table_bytes: int
    gram_starts: int
    gram_blocks: int
    sample_tensors: int
    sample_slots: int
    passes: int = 1

    @property
    def total_bytes(self) -> int:
        return self.gram_bytes + self.sample_bytes + self.table_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}

    def describe(self) -> str:
        return (f"Gram sums {format_size(self.gram_bytes)} ({self.gram_starts} XᵀX + {self.gram_blocks} XᵀY), "
                f"activation sample {format_size(self.sample_bytes)} ({self.sample_tensors} tensors × "
                f"{self.sample_slots} token slots), {self.passes} pass{'es' if self.passes > 1 else ''}")


def estimate(request: StatsRequest, *, hidden: int, num_layers: int, dtype_bytes: int, sample_slots: int,
             passes: int = 1) -> StatsEstimate:
    """The :class:`StatsEstimate` of ``request`` (``sample_slots``: ``Σ B·T`` of the batches
    the sample keeps, from :func:`replaceme.stats.collect.plan_batches`)."""
    variants = 2 if request.gram_with_pad else 1
    starts = len({s for s, _ in request.gram_blocks})
    blocks = len(request.gram_blocks)
    tensors = len(request.sample_boundaries) + len(request.sample_mlp) if request.wants_sample else 0
    sizes = [n for n in request.block_sizes if 1 <= n <= num_layers]
    return StatsEstimate(
        gram_bytes=8 * hidden * hidden * (starts + blocks) * variants,
        sample_bytes=tensors * sample_slots * hidden * dtype_bytes,
        table_bytes=16 * (num_layers + 1) * len(sizes),
        gram_starts=starts * variants, gram_blocks=blocks * variants, sample_tensors=tensors,
        sample_slots=sample_slots if tensors else 0, passes=passes,
    )


def format_size(n: int) -> str:
    """Bytes for people: ``512 B``, ``1.5 MB``, ``6.4 GB`` (binary units)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
