"""Built-in plugin: ShortGPT (Men et al., "ShortGPT: Layers in Large Language
Models are More Redundant Than You Expect", arXiv 2403.03853).

Block Influence of layer i, from the shared pass's mean token cosine table:

    BI_i = 1 − mean over non-pad tokens of cos(x_i, x_{i+1})

ShortGPT removes the N layers with the lowest BI; they need not be contiguous.

- selector ``lowest-influence``: the N single layers with the lowest BI (with a
  compensator that writes into the layer before each block, the layers must
  not touch and layer 0 is excluded; picks are then greedy by BI);
- method ``shortgpt`` = lowest-influence + no compensation + remove.
"""

from __future__ import annotations

from dataclasses import dataclass

from replaceme.components import Method, SelectionContext, Selector
from replaceme.errors import ReplacemeError
from replaceme.hookspecs import hookimpl
from replaceme.options import option
from replaceme.plan import Block, Plan, greedy_non_overlapping, single_layers
from replaceme.stats.request import StatsRequest


@dataclass
class LowestInfluenceOptions:
    keep_first: bool = option(False, "never remove layer 0 (the paper ranks every layer)")


class LowestInfluenceSelector(Selector):
    """The N layers with the lowest Block Influence, anywhere in the model."""

    name = "lowest-influence"
    description = "The N layers with the lowest ShortGPT Block Influence (need not be contiguous)."
    Options = LowestInfluenceOptions

    def candidates(self, ctx: SelectionContext) -> list[Block]:
        return single_layers(ctx, self.name, self.options.keep_first)

    def stats_request(self, ctx: SelectionContext) -> StatsRequest:
        return StatsRequest(block_sizes={1})

    def select(self, stats, ctx: SelectionContext) -> Plan:
        bi = [float(v) for v in stats.block_influence]
        scored = [(bi[b.start], b) for b in self.candidates(ctx)]
        picked = greedy_non_overlapping(scored, ctx.layers, allow_touching=not ctx.separate_blocks)
        if len(picked) < ctx.layers:
            raise ReplacemeError(f"only {len(picked)} layers can be removed without touching; asked for {ctx.layers}")
        return Plan([b for _, b in picked], scores=[s for s, _ in picked],
                    details={"score": "block influence 1 - mean token cos(x_i, x_i+1)", "block_influence": bi})


@hookimpl
def register_selectors(register):
    register(LowestInfluenceSelector)


@hookimpl
def register_methods(register):
    register(Method("shortgpt", "lowest-influence", "none", "remove",
                    description="Remove the N layers with the lowest Block Influence (need not be contiguous).",
                    reference="Men et al. 2024, arXiv 2403.03853"))
