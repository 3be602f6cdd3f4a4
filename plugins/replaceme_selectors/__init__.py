"""Built-in plugin: selectors that score blocks from the shared distance tables.

- ``angular-distance``: mean ``arccos(cos(x_s, x_{s+n}))/π`` on the last non-pad
  token (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers",
  arXiv 2403.17887; used by ReplaceMe); smallest wins.
- ``mean-token-cosine``: mean per-token ``cos(x_s, x_{s+n})`` over all non-pad
  tokens (LLM-Streamline, arXiv 2403.19135); highest wins.
- ``block-influence``: sum over the block of ShortGPT's per-layer
  ``BI_i = 1 − mean token cos(x_i, x_{i+1})`` (arXiv 2403.03853); smallest wins.
  With blocks of one layer and ``num_blocks`` = N this is ShortGPT's selection.

Layer 0 is never removed. ``num_blocks`` > 1 picks that many non-overlapping
blocks greedily by score; ``merge_consecutive`` then fuses blocks that touch.
"""

from __future__ import annotations

from dataclasses import dataclass

import replaceme_selectors.scoring as scoring
from replaceme.components import SelectionContext, Selector
from replaceme.errors import ReplacemeError
from replaceme.hookspecs import hookimpl
from replaceme.options import option
# block_size, blocks_of_size, first_removable and single_layers live in replaceme.plan
# (re-exported here for plugins written against their old home)
from replaceme.plan import (  # noqa: F401
    Block,
    Plan,
    block_size,
    blocks_of_size,
    first_removable,
    greedy_non_overlapping,
    merge_touching,
    single_layers,
)
from replaceme.stats.request import StatsRequest


@dataclass
class DistanceOptions:
    num_blocks: int = option(1, "number of non-overlapping blocks; --layers is split evenly among them")
    merge_consecutive: bool = option(False, "fuse chosen blocks that touch into one block (one compensation)")

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")


class DistanceSelector(Selector):
    """Pick the blocks with the best score from a distance table (lower is better)."""

    Options = DistanceOptions
    selects_from_tables = True
    #: scoring function: (stats, block) -> float, lower = safer to remove.
    score = staticmethod(scoring.angular)

    def block_size(self, ctx: SelectionContext) -> int:
        return block_size(ctx, self.options.num_blocks)

    def candidates(self, ctx: SelectionContext) -> list[Block]:
        n = self.block_size(ctx)
        singles = blocks_of_size(ctx, n)
        self._check_fits(ctx, n)
        if not (self.options.merge_consecutive and self.options.num_blocks > 1):
            return singles
        merged = [
            Block(s, s + k * n)
            for k in range(2, self.options.num_blocks + 1)
            for s in range(1, ctx.num_layers - k * n + 1)
        ]
        return singles + merged

    def _check_fits(self, ctx: SelectionContext, n: int) -> None:
        """What the options ask for fits the model at all (decided from the layer count, before
        any weights load); whether the best-scored blocks leave room is known only after the pass."""
        k = self.options.num_blocks
        gaps = k - 1 if ctx.separate_blocks and not self.options.merge_consecutive else 0
        if k * n + gaps > ctx.num_layers - 1:
            raise ReplacemeError(f"only {ctx.num_layers - 1} layers after layer 0 of a {ctx.num_layers}-layer model: "
                                 f"{k} non-overlapping blocks of {n} layers do not fit")
        if self.options.merge_consecutive and ctx.layers_added_per_block:
            raise ReplacemeError("merge_consecutive cannot be used with a compensator that writes layers back")

    def stats_request(self, ctx: SelectionContext) -> StatsRequest:
        return StatsRequest(block_sizes={self.block_size(ctx), 1})

    def select(self, stats, ctx: SelectionContext) -> Plan:
        n = self.block_size(ctx)
        scored = [(self.score(stats, Block(s, s + n)), Block(s, s + n)) for s in range(1, ctx.num_layers - n + 1)]
        allow_touching = self.options.merge_consecutive or not ctx.separate_blocks
        picked = greedy_non_overlapping(scored, self.options.num_blocks, allow_touching)
        if len(picked) < self.options.num_blocks:
            raise ReplacemeError(
                f"only {len(picked)} non-overlapping blocks of {n} layers fit; asked for {self.options.num_blocks}"
            )
        blocks = [b for _, b in picked]
        if self.options.merge_consecutive:
            if ctx.layers_added_per_block:
                raise ReplacemeError("merge_consecutive cannot be used with a compensator that writes layers back")
            blocks = merge_touching(blocks)
        return Plan(
            blocks,
            scores=[self.score(stats, b) if b.size == n else float("nan") for b in blocks],
            details={"score": self.name, "block_size": n},
        )


class AngularDistanceSelector(DistanceSelector):
    name = "angular-distance"
    description = "Smallest angular distance between a block's input and output (last token)."
    score = staticmethod(scoring.angular)


class MeanTokenCosineSelector(DistanceSelector):
    name = "mean-token-cosine"
    description = "Highest mean per-token cosine between a block's input and output (LLM-Streamline)."
    score = staticmethod(scoring.token_cosine)


class BlockInfluenceSelector(DistanceSelector):
    name = "block-influence"
    description = "Smallest summed ShortGPT block influence of the block's layers."
    score = staticmethod(scoring.block_influence)


@hookimpl
def register_selectors(register):
    for cls in (AngularDistanceSelector, MeanTokenCosineSelector, BlockInfluenceSelector):
        register(cls)
