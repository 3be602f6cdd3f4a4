"""What a method decides: which blocks of layers go, and what replaces them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from replaceme.errors import ReplacemeError


@dataclass(frozen=True, order=True)
class Block:
    """A block of consecutive decoder layers ``[start, end)`` (0-based, end exclusive).

    Removing it feeds layer ``end`` with (a replacement for) ``x_start``, the
    input of layer ``start``, instead of ``x_end``.
    """

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"invalid block [{self.start}, {self.end})")

    @property
    def size(self) -> int:
        return self.end - self.start

    def overlaps(self, other: Block) -> bool:
        return self.start < other.end and other.start < self.end

    def touches(self, other: Block) -> bool:
        return self.end == other.start or other.end == self.start

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"


@dataclass
class Plan:
    """The blocks a selector chose, sorted and non-overlapping.

    Attributes:
        blocks: the blocks, in layer order.
        scores: the selector's score of each block (lower = safer to remove for
            distances; stated by the selector), same order as ``blocks``.
        details: selector-specific extras (JSON-able), recorded in ``pruning.json``.
    """

    blocks: list[Block]
    scores: list[float] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        order = sorted(range(len(self.blocks)), key=lambda i: self.blocks[i])
        self.blocks = [self.blocks[i] for i in order]
        if self.scores:
            self.scores = [self.scores[i] for i in order]
        for a, b in zip(self.blocks, self.blocks[1:]):
            if a.overlaps(b):
                raise ValueError(f"blocks {a} and {b} overlap")

    @property
    def layers_in_blocks(self) -> int:
        return sum(b.size for b in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "blocks": [[b.start, b.end] for b in self.blocks],
            "scores": list(self.scores),
            **({"details": self.details} if self.details else {}),
        }


def merge_touching(blocks: list[Block]) -> list[Block]:
    """Merge blocks that touch (``[1,3)`` and ``[3,5)`` become ``[1,5)``)."""
    merged: list[Block] = []
    for b in sorted(blocks):
        if merged and merged[-1].end == b.start:
            merged[-1] = Block(merged[-1].start, b.end)
        else:
            merged.append(b)
    return merged


def greedy_non_overlapping(
    scored: list[tuple[float, Block]], count: int, allow_touching: bool = True
) -> list[tuple[float, Block]]:
    """Pick ``count`` blocks by ascending score, skipping any that overlap a pick
    (or touch one, unless ``allow_touching``)."""
    picked: list[tuple[float, Block]] = []
    for score, block in sorted(scored, key=lambda sb: (sb[0], sb[1])):
        if all(not (block.overlaps(p) or (not allow_touching and block.touches(p))) for _, p in picked):
            picked.append((score, block))
            if len(picked) == count:
                break
    return picked


# Candidate lists shared by selectors. ``ctx`` is a
# :class:`replaceme.components.SelectionContext` (num_layers, layers,
# layers_added_per_block, separate_blocks).


def block_size(ctx: Any, num_blocks: int) -> int:
    """Layers per block when ``--layers`` is split evenly into ``num_blocks`` blocks
    (plus the layers the compensator writes back into each)."""
    if ctx.layers % num_blocks:
        raise ReplacemeError(f"--layers {ctx.layers} cannot be split evenly into num_blocks={num_blocks} blocks")
    return ctx.layers // num_blocks + ctx.layers_added_per_block


def blocks_of_size(ctx: Any, n: int) -> list[Block]:
    """Every block of ``n`` layers that starts after layer 0."""
    if n > ctx.num_layers - 1:
        raise ReplacemeError(f"a block of {n} layers does not fit after layer 0 of a {ctx.num_layers}-layer model")
    return [Block(s, s + n) for s in range(1, ctx.num_layers - n + 1)]


def first_removable(ctx: Any, keep_first: bool) -> int:
    """The lowest layer a single-layer selector may remove: 1 when layer 0 must stay
    (``keep_first``, or a compensator that writes into the layer before each block), else 0."""
    return 1 if (keep_first or ctx.separate_blocks) else 0


def single_layers(ctx: Any, selector: str, keep_first: bool) -> list[Block]:
    """Every one-layer block a single-layer selector (ShortGPT, SLEB) may remove."""
    if ctx.layers_added_per_block:
        raise ReplacemeError(f"selector '{selector}' removes single layers; it cannot be used with a "
                             "compensator that writes layers back")
    return [Block(i, i + 1) for i in range(first_removable(ctx, keep_first), ctx.num_layers)]
