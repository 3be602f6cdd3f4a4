"""Built-in plugin: selection by what the model actually loses.

Both selectors score candidate plans with the :class:`replaceme.scoring.PlanScorer`
the orchestration puts in the selection context: the method's own compensator
and merger are applied to a variant of the model, and the calibration loss (or
the KL divergence to the unpruned model) is measured on calibration batches.

- ``calibration-loss``: every block of the right size (or the ``shortlist``
  best by a cheap distance) is compensated and scored on the *held-out*
  calibration batches, which the compensation did not fit; the lowest wins.
  Distances are proxies and often pick a worse block than the loss does
  (Kim et al. 2026, arXiv 2604.24938: the calibration objective matters more
  than the search). Usable with any compensator: ``--selector calibration-loss``.
- ``sleb`` and method ``sleb``: SLEB (Song et al., "SLEB: Streamlining LLMs
  through Redundancy Verification and Elimination of Transformer Blocks",
  ICML 2024, arXiv 2402.09025). N rounds; each removes the one layer of the
  current, partly pruned model whose removal gives the lowest calibration
  perplexity (the paper's default metric), re-evaluated every round.
- method ``replaceme-lstsq-loss``: ReplaceMe's LSTSQ map with ``calibration-loss``
  selection (the same as ``-m replaceme-lstsq --selector calibration-loss``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from replaceme.components import Method, SelectionContext, Selector
from replaceme.errors import ReplacemeError
from replaceme.hookspecs import hookimpl
from replaceme.options import option
from replaceme.plan import (
    Block,
    Plan,
    block_size,
    blocks_of_size,
    first_removable,
    greedy_non_overlapping,
    single_layers,
)
from replaceme.stats.request import StatsRequest

log = logging.getLogger(__name__)


def _scorer(ctx: SelectionContext, name: str):
    if ctx.scorer is None:
        raise ReplacemeError(f"selector '{name}' scores plans and needs the scorer that prune/compare supply")
    return ctx.scorer


def _distance(stats, block: Block, kind: str) -> float:
    import replaceme_selectors.scoring as scoring

    return {"angular": scoring.angular, "token-cosine": scoring.token_cosine,
            "block-influence": scoring.block_influence}[kind](stats, block)


@dataclass
class CalibrationLossOptions:
    objective: Literal["loss", "kl"] = option(
        "loss", "score: next-token cross-entropy on held-out calibration text, or KL divergence to the "
        "unpruned model's next-token distribution")
    shortlist: int = option(0, "compensate and score only the k blocks with the smallest distance (0 = every block)")
    distance: Literal["angular", "token-cosine", "block-influence"] = option(
        "angular", "the cheap distance that orders the shortlist (and is reported beside each score)")
    num_blocks: int = option(1, "number of non-overlapping blocks, each scored alone; --layers is split evenly")
    fallback_tokens: int = option(
        4096, "when the pass holds no batches out (few batches, --holdout-fraction 0), score on this many training "
        "tokens instead, which the compensation did fit (with a warning); 0 = refuse instead")

    def __post_init__(self) -> None:
        if self.shortlist < 0 or self.fallback_tokens < 0:
            raise ValueError("shortlist and fallback_tokens must be >= 0")
        if self.num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")


class CalibrationLossSelector(Selector):
    """Compensate every candidate block and keep the one with the lowest held-out loss."""

    name = "calibration-loss"
    description = "Compensate each candidate block; pick the lowest loss on held-out calibration batches."
    Options = CalibrationLossOptions

    def needs_holdout(self) -> bool:
        return self.options.fallback_tokens == 0  # else it scores on training tokens, with a warning

    def block_size(self, ctx: SelectionContext) -> int:
        return block_size(ctx, self.options.num_blocks)

    def candidates(self, ctx: SelectionContext) -> list[Block]:
        return blocks_of_size(ctx, self.block_size(ctx))

    def stats_request(self, ctx: SelectionContext) -> StatsRequest:
        from replaceme.scoring import scoring_request

        starts = {b.start for b in self.candidates(ctx)}
        first = starts | {s - 1 for s in starts}
        return StatsRequest(block_sizes={self.block_size(ctx), 1}).union(
            scoring_request(ctx.num_layers, first, self.options.fallback_tokens))

    def shortlisted(self, stats, ctx: SelectionContext) -> list[tuple[float, Block]]:
        """``(distance, block)`` of the candidates to score, best distance first."""
        scored = sorted((_distance(stats, b, self.options.distance), b) for b in self.candidates(ctx))
        return scored[: self.options.shortlist] if self.options.shortlist else scored

    def select(self, stats, ctx: SelectionContext) -> Plan:
        from replaceme.console import track

        scorer = _scorer(ctx, self.name)
        data = "holdout"
        if not stats.sample.holdout and stats.sample.train and self.options.fallback_tokens:
            log.warning("calibration-loss: no held-out calibration batches; scoring on %d training tokens the "
                        "compensation was fitted on (hold batches out with more data or --holdout-fraction)",
                        sum(b.tokens for b in stats.sample.train))
            data = "all"
        rows, scored = [], []
        for dist, block in track(self.shortlisted(stats, ctx), f"scoring blocks ({self.options.objective})"):
            score = scorer.score(Plan([block]), data=data)
            value = score.value(self.options.objective)
            scored.append((value, block))
            rows.append({"block": [block.start, block.end], f"{self.options.distance}_distance": dist, **score.to_dict()})
        allow_touching = not ctx.separate_blocks
        picked = greedy_non_overlapping(scored, self.options.num_blocks, allow_touching)
        if len(picked) < self.options.num_blocks:
            raise ReplacemeError(f"only {len(picked)} non-overlapping candidate blocks; asked for {self.options.num_blocks}")
        rows.sort(key=lambda r: r[self.options.objective])
        return Plan([b for _, b in picked], scores=[v for v, _ in picked],
                    details={"score": f"{self.options.objective} after compensation", "scored_on": data, "candidates": rows})


@dataclass
class SlebOptions:
    objective: Literal["loss", "kl"] = option(
        "loss", "what a removal may raise least: calibration cross-entropy (= perplexity, the paper's metric) "
        "or KL divergence to the unpruned model")
    token_budget: int = option(
        16384, "calibration tokens scored per candidate: the held-out batches plus training batches up to this budget")
    keep_first: bool = option(False, "never remove layer 0 (the paper may remove any layer)")

    def __post_init__(self) -> None:
        if self.token_budget < 0:
            raise ValueError("token_budget must be >= 0")


class SlebSelector(Selector):
    """SLEB: remove one layer per round, the one whose removal costs least on the current model."""

    name = "sleb"
    description = "N rounds, each removing the layer whose removal raises calibration perplexity least (SLEB)."
    Options = SlebOptions

    def _lowest(self, ctx: SelectionContext) -> int:
        return first_removable(ctx, self.options.keep_first)

    def candidates(self, ctx: SelectionContext) -> list[Block]:
        return single_layers(ctx, self.name, self.options.keep_first)

    def stats_request(self, ctx: SelectionContext) -> StatsRequest:
        from replaceme.scoring import scoring_request

        first = set(range(max(self._lowest(ctx) - 1, 0), ctx.num_layers))
        return scoring_request(ctx.num_layers, first, self.options.token_budget)

    def select(self, stats, ctx: SelectionContext) -> Plan:
        from replaceme.console import track

        scorer = _scorer(ctx, self.name)
        removed: list[Block] = []
        rounds = []
        for r in track(range(ctx.layers), "SLEB rounds"):
            options = []
            for block in self.candidates(ctx):
                if block in removed or (ctx.separate_blocks and any(block.touches(b) for b in removed)):
                    continue
                score = scorer.score(Plan([*removed, block]), data="all")
                options.append((score.value(self.options.objective), block, score))
            if not options:
                raise ReplacemeError(f"SLEB round {r + 1}: no layer left that can be removed")
            value, block, score = min(options, key=lambda o: (o[0], o[1]))
            removed.append(block)
            rounds.append({"removed": block.start, self.options.objective: value, "ppl": score.ppl,
                           "scores": {str(b.start): v for v, b, _ in options}})
        return Plan(removed, scores=[r[self.options.objective] for r in rounds],
                    details={"score": f"calibration {self.options.objective} of the partly pruned model", "rounds": rounds})


@hookimpl
def register_selectors(register):
    register(CalibrationLossSelector)
    register(SlebSelector)


@hookimpl
def register_methods(register):
    register(Method("replaceme-lstsq-loss", "calibration-loss", "lstsq", "fold-linear",
                    description="ReplaceMe's least-squares map, on the block whose compensated model loses least "
                                "on held-out calibration text (= -m replaceme-lstsq --selector calibration-loss).",
                    reference="ReplaceMe (arXiv 2505.02819) + calibration-loss selection"))
    register(Method("sleb", "sleb", "none", "remove",
                    description="Remove one layer per round, the one whose removal raises calibration perplexity least.",
                    reference="Song et al., ICML 2024, arXiv 2402.09025"))
