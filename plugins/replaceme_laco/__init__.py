"""Built-in plugin: LaCo (Yang et al., "LaCo: Large Language Model Pruning via
Layer Collapse", arXiv 2402.11187).

Reserving-Differences-while-Seeking-Common (RDSC) collapses layers
``l+1..l+k`` into layer ``l``:

    θ*_l = θ_l + Σ_{j=1..k} (θ_{l+j} − θ_l)

for the parameters of every linear projection of the layer (attention and MLP);
normalisation weights stay layer ``l``'s, as in the authors' code. Layers
``l+1..l+k`` are then removed, so the result is a standard model.

Search (the paper's Algorithm 1): start at ``l = highest − C``; merge layer
``l`` of the *current* model with its next ``C − 1`` layers; accept when the
similarity of the merged and original models on calibration data exceeds the
threshold T, then move down by ``interval``; otherwise move down by one; stop
below ``lowest``. Similarity (as the authors' code): per sequence, the cosine
between the flattened last hidden states (after the final norm) of the two
models, averaged over sequences.

Exactly ``--layers N``: ``--layers`` means N fewer layers, so a merge takes at
most the layers still to remove (the last accepted merge may be smaller than
``C − 1``) and the search stops once N are gone. If the sweep ends with fewer
than N removed because T rejected too many merges, the remaining merges are
chosen greedily by similarity (whether they pass T or not), with a warning;
``pruning.json`` records every tried merge, its similarity and whether it passed T. So T decides
*where* layers collapse first, never *how many*.

Differences from the authors' code, on purpose: their loop adds
``θ_{l+j} − θ*`` with the running θ* (each addition replaces the weights by
the next layer's); we implement the paper's formula. Merges compound as in
the paper: a layer absorbed later may itself be an earlier merge; the plan
records the merge order in ``details["compensation"]["merges"]`` and the
``rdsc`` compensator replays it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from replaceme.components import Compensator, Merger, Method, ParameterUpdate, SelectionContext, Selector
from replaceme.errors import ReplacemeError
from replaceme.hookspecs import hookimpl
from replaceme.options import option
from replaceme.plan import Block, Plan
from replaceme.stats.request import StatsRequest

log = logging.getLogger(__name__)


def plan_from_groups(groups: list[list[int]], merges: list[list]) -> Plan:
    """The plan of a partly collapsed model: ``groups`` are the current layers as
    lists of original indices; each group of several layers is one block
    ``[head + 1, last + 1)`` collapsed into its head, in the order ``merges``."""
    blocks = [Block(g[0] + 1, g[-1] + 1) for g in groups if len(g) > 1]
    return Plan(blocks, details={"compensation": {"merges": [list(m) for m in merges]}})


@dataclass
class LacoOptions:
    merge_layers: int = option(4, "C: a merge collapses a layer with its next C-1 layers (paper: 4 for Llama2-7B)")
    interval: int = option(2, "I: after an accepted merge, move this many layers down (paper: 2)")
    threshold: float = option(
        0.65, "T: accept a merge while the merged model's last hidden states keep this cosine with the original's "
        "(paper: 0.65); it orders where layers collapse, not how many (--layers decides that)")
    lowest: int = option(1, "L: the lowest layer a merge may start at")
    highest: int = option(0, "H: the search starts at H - C (0 = the number of layers)")
    token_budget: int = option(8192, "calibration tokens compared: the held-out batches plus training ones up to this budget")

    def __post_init__(self) -> None:
        if self.merge_layers < 2 or self.interval < 1 or self.lowest < 0 or self.highest < 0 or self.token_budget < 0:
            raise ValueError("need merge_layers >= 2, interval >= 1, lowest >= 0, highest >= 0, token_budget >= 0")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError("threshold is a cosine: between -1 and 1")


class LacoSelector(Selector):
    """LaCo's search: collapse from the top down, keeping merges that preserve the last hidden states."""

    name = "laco"
    description = "Collapse layers top-down while the last hidden states stay similar (LaCo)."
    Options = LacoOptions

    def candidates(self, ctx: SelectionContext) -> list[Block]:
        if ctx.layers_added_per_block:  # its merges remove exactly the layers asked for, none written back
            raise ReplacemeError("selector 'laco' collapses exactly --layers layers; it cannot be used with a "
                                 "compensator that writes layers back")
        if ctx.layers > ctx.num_layers - 1 - self.options.lowest:
            raise ReplacemeError(f"laco: merges into layers >= {self.options.lowest} (-o lowest) can remove at most "
                                 f"{ctx.num_layers - 1 - self.options.lowest} of {ctx.num_layers} layers; asked for {ctx.layers}")
        return [Block(s, e) for s in range(max(self.options.lowest, 0) + 1, ctx.num_layers) for e in range(s + 1, ctx.num_layers + 1)]

    def stats_request(self, ctx: SelectionContext) -> StatsRequest:
        from replaceme.scoring import scoring_request

        return scoring_request(ctx.num_layers, set(range(self.options.lowest, ctx.num_layers)), self.options.token_budget)

    def select(self, stats, ctx: SelectionContext) -> Plan:
        if ctx.scorer is None:
            raise ReplacemeError("selector 'laco' needs the scorer that prune/compare supply")
        o, target = self.options, ctx.layers
        groups = [[i] for i in range(ctx.num_layers)]
        merges: list[list] = []
        tried: list[dict] = []

        def attempt(lay: int, k: int) -> tuple[float, list, list]:
            new_groups = groups[:lay] + [sum(groups[lay : lay + k + 1], [])] + groups[lay + k + 1 :]
            new_merges = merges + [[groups[lay][0], [g[0] for g in groups[lay + 1 : lay + k + 1]]]]
            sim = ctx.scorer.score(plan_from_groups(new_groups, new_merges), data="all").final_cosine
            entry = {"base": groups[lay][0], "absorbed": [i for g in groups[lay + 1 : lay + k + 1] for i in g],
                     "similarity": sim, "passed": sim > o.threshold}
            if entry not in tried:  # the fallback may score a merge the sweep already tried
                tried.append(entry)
            return sim, new_groups, new_merges

        removed = 0
        lay = (o.highest or ctx.num_layers) - o.merge_layers
        while lay >= o.lowest and removed < target:
            k = min(o.merge_layers - 1, len(groups) - lay - 1, target - removed)
            if k <= 0:
                lay -= 1
                continue
            sim, new_groups, new_merges = attempt(lay, k)
            if sim > o.threshold:
                groups, merges, removed = new_groups, new_merges, removed + k
                lay -= o.interval
                if lay >= len(groups):
                    lay = len(groups) - 1 - o.merge_layers
            else:
                lay -= 1
        swept, greedy, below = removed, 0, 0
        while removed < target:  # the sweep ended short: take the most similar merges
            options = []
            for lay in range(max(o.lowest, 0), len(groups) - 1):
                k = min(o.merge_layers - 1, len(groups) - lay - 1, target - removed)
                options.append(attempt(lay, k) + (k,))
            if not options:
                raise ReplacemeError(f"laco: no merge left to remove {target - removed} more layer(s)")
            sim, groups, merges, k = max(options, key=lambda t: t[0])
            removed += k
            greedy += 1
            below += sim <= o.threshold
        if greedy:
            log.warning("laco: the top-down sweep removed %d of %d layers; %d more merge(s) chosen by best similarity, "
                        "%d of them at or below the threshold %.3g", swept, target, greedy, below, o.threshold)
        plan = plan_from_groups(groups, merges)
        final = ctx.scorer.score(plan, data="all")
        plan.scores = [final.final_cosine] * len(plan.blocks)
        plan.details.update({"score": "last hidden state cosine to the unpruned model", "tried": tried,
                             "greedy_merges": greedy, "greedy_below_threshold": below,
                             "final_similarity": final.final_cosine})
        return plan


def _mergeable(layer) -> dict[str, object]:
    """Parameters of the layer's linear projections (``nn.Linear``, GPT-2's ``Conv1D``), by name."""
    from torch import nn

    out = {}
    for prefix, module in layer.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            for name, p in module.named_parameters(recurse=False):
                out[f"{prefix}.{name}" if prefix else name] = p
    return out


def rdsc(base: dict, others: list[dict]) -> dict:
    """``θ_base + Σ (θ_other − θ_base)`` per parameter name, in float64."""
    return {n: t + sum(o[n] - t for o in others) for n, t in base.items()}


class RdscCompensator(Compensator):
    """Collapse each block into the layer before it: θ*_l = θ_l + Σ_j (θ_{l+j} − θ_l) (LaCo's RDSC)."""

    name = "rdsc"
    description = "Merge a block's layers into the layer before it by adding their parameter differences (LaCo)."
    produces = ParameterUpdate
    default_merger = "collapse"
    needs_layer_before = True

    def stats_request(self, candidates: list[Block]) -> StatsRequest:
        for block in candidates:
            if block.start < 1:
                raise ReplacemeError(f"block {block} starts at layer 0: there is no layer before it to collapse into")
        return StatsRequest()

    @staticmethod
    def _merges(plan: Plan) -> list:
        """``[head, [absorbed layers]]`` in merge order (LaCo's, else one per block)."""
        return (plan.details.get("compensation") or {}).get("merges") or [
            [b.start - 1, list(range(b.start, b.end))] for b in plan.blocks]

    def reads(self, plan: Plan) -> set[int]:
        """Every layer collapsed: the head of each merge and the layers it absorbs."""
        return {i for head, absorbed in self._merges(plan) for i in (head, *absorbed)}

    def compensate(self, plan: Plan, ctx) -> list[ParameterUpdate]:
        import torch

        layers = ctx.adapter.layers(ctx.model)
        merges = self._merges(plan)
        current: dict[int, dict] = {}

        def params(i: int) -> dict:
            if i not in current:
                current[i] = {n: p.detach().to(torch.float64) for n, p in _mergeable(layers[i]).items()}
                if any(t.is_meta for t in current[i].values()):  # a caller that did not load reads(plan)
                    raise RuntimeError(f"rdsc: layer {i} is not in memory")
            return current[i]

        for head, absorbed in merges:
            current[head] = rdsc(params(head), [params(a) for a in absorbed])
            for a in absorbed:
                current.pop(a, None)
        out = []
        for block in plan.blocks:
            head = block.start - 1
            if head not in current:
                raise ReplacemeError(f"rdsc: block {block} has no merge into layer {head}")
            dtypes = {n: p.dtype for n, p in _mergeable(layers[head]).items()}
            value = {n: t.to(dtypes[n]) for n, t in current[head].items()}
            out.append(ParameterUpdate(block, layer=head, parameters=value,
                                       diagnostics={"collapsed_into": head, "layers": block.size + 1}))
        return out


class CollapseMerger(Merger):
    """Write each block's collapsed parameters into layer ``start - 1``, then remove the blocks."""

    name = "collapse"
    description = "Write collapsed parameters into the layer before each block, then remove the block."
    accepts = (ParameterUpdate,)

    def merge(self, model, adapter, plan, compensations) -> None:
        import torch

        from replaceme.surgery import remove_layers

        layers = adapter.layers(model)
        with torch.no_grad():
            for comp in compensations:
                target = _mergeable(layers[comp.layer])
                for name, value in comp.parameters.items():
                    target[name].copy_(value)
        remove_layers(model, adapter, {i for b in plan.blocks for i in range(b.start, b.end)})

    def modifies(self, plan, compensations) -> set[int]:
        """The layer before each block, which receives the collapsed parameters."""
        return {c.layer for c in compensations}


@hookimpl
def register_selectors(register):
    register(LacoSelector)


@hookimpl
def register_compensators(register):
    register(RdscCompensator)


@hookimpl
def register_mergers(register):
    register(CollapseMerger)


@hookimpl
def register_methods(register):
    register(Method("laco", "laco", "rdsc", "collapse",
                    description="Collapse layers into the one before them (RDSC) while last hidden states stay similar.",
                    reference="Yang et al. 2024, arXiv 2402.11187"))
