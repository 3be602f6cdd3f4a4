"""What statistics the methods of a run ask the shared pass for (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StatsRequest:
    """A union-able request for the shared statistics pass.

    Attributes:
        block_sizes: block sizes ``n`` whose distance tables are needed
            (angular distance and mean token cosine for every start).
        gram_blocks: blocks ``(start, end)`` needing the ReplaceMe normal
            equations ``XᵀX`` and ``XᵀY`` (X = m_{start-1}, Y = x_end − x_start + m_{start-1}).
        gram_with_pad: also accumulate those sums including pad tokens
            (to reproduce the reference implementation).
        sample_tokens: token budget of the stored activation sample
            (whole calibration batches, chosen by the seed).
        sample_boundaries: boundary indices j whose states x_j are stored in the sample.
        sample_mlp: layer indices i whose MLP outputs m_i are stored in the sample.
        layer_kwargs: also store the keyword arguments each sampled layer was
            called with, so a layer can be replayed (trained) on the sample.
    """

    block_sizes: set[int] = field(default_factory=set)
    gram_blocks: set[tuple[int, int]] = field(default_factory=set)
    gram_with_pad: bool = False
    sample_tokens: int = 0
    sample_boundaries: set[int] = field(default_factory=set)
    sample_mlp: set[int] = field(default_factory=set)
    layer_kwargs: set[int] = field(default_factory=set)

    def union(self, other: StatsRequest) -> StatsRequest:
        return StatsRequest(
            block_sizes=self.block_sizes | other.block_sizes,
            gram_blocks=self.gram_blocks | other.gram_blocks,
            gram_with_pad=self.gram_with_pad or other.gram_with_pad,
            sample_tokens=max(self.sample_tokens, other.sample_tokens),
            sample_boundaries=self.sample_boundaries | other.sample_boundaries,
            sample_mlp=self.sample_mlp | other.sample_mlp,
            layer_kwargs=self.layer_kwargs | other.layer_kwargs,
        )

    @property
    def is_empty(self) -> bool:
        """Nothing to measure: the method needs no calibration data at all."""
        return not (self.block_sizes or self.gram_blocks or self.wants_sample)

    @property
    def wants_sample(self) -> bool:
        return bool(self.sample_boundaries or self.sample_mlp or self.layer_kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "block_sizes": sorted(self.block_sizes),
            "gram_blocks": sorted(self.gram_blocks),
            "gram_with_pad": self.gram_with_pad,
            "sample_tokens": self.sample_tokens,
            "sample_boundaries": sorted(self.sample_boundaries),
            "sample_mlp": sorted(self.sample_mlp),
            "layer_kwargs": sorted(self.layer_kwargs),
        }
