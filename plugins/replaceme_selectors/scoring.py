"""Block scores from :class:`replaceme.stats.ActivationStats`; lower = safer to remove."""

from __future__ import annotations

from typing import TYPE_CHECKING

from replaceme.plan import Block

if TYPE_CHECKING:
    from replaceme.stats.store import ActivationStats


def angular(stats: ActivationStats, block: Block) -> float:
    """Mean angular distance ``arccos(cos(x_s, x_e))/π`` on last tokens, in [0, 1]."""
    return float(stats.angular[block.size][block.start])


def token_cosine(stats: ActivationStats, block: Block) -> float:
    """``1 − mean token cos(x_s, x_e)``, so that lower is better like the others."""
    return 1.0 - float(stats.token_cosine[block.size][block.start])


def block_influence(stats: ActivationStats, block: Block) -> float:
    """Sum of ShortGPT block influence ``1 − mean token cos(x_i, x_{i+1})`` over the block."""
    return float(stats.block_influence[block.start : block.end].sum())
