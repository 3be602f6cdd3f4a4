"""Every built-in distance selector against a direct computation of its criterion
from hooked hidden states, so swapping two criteria fails the suite; ``num_blocks``
and ``merge_consecutive`` against a direct greedy choice.

Criteria (see plugins/replaceme_selectors): angular distance ``arccos(cos(x_s,
x_{s+n}))/π`` on each sequence's last non-pad token, averaged over sequences;
mean token cosine ``cos(x_s, x_{s+n})`` over non-pad tokens (score ``1 − cos``);
block influence ``Σ_{i∈block} 1 − mean token cos(x_i, x_{i+1})``. Lower is better.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny import boundary_states, tiny_model

from replaceme.calibration import CalibrationSpec, build_calibration
from replaceme.methods import resolve_method
from replaceme.pipeline import Run, prepare
from replaceme.plan import Block
from replaceme.registry import adapter_for

L = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tiny import calibration_text, make_tokenizer

    tokenizer = make_tokenizer()
    path = calibration_text(tmp_path_factory.mktemp("c") / "calib.txt", records=30)
    spec = CalibrationSpec(str(path), samples=20, max_length=40, batch_size=4, seed=0)
    model = tiny_model("qwen2", seed=3)
    states = boundary_states(model, adapter_for(model), build_calibration(spec, tokenizer))
    return model, tokenizer, spec, states


def direct_scores(states, n: int) -> dict[str, dict[Block, float]]:
    """The three criteria for every block of ``n`` layers starting at 1..L-n."""
    ang = torch.zeros(L + 1, dtype=torch.float64)
    cos = torch.zeros(L + 1, dtype=torch.float64)
    one = torch.zeros(L, dtype=torch.float64)
    sequences = tokens = 0
    for mask, x in states:
        rows = torch.arange(mask.shape[0])
        last = torch.tensor([int(torch.nonzero(m).max()) for m in mask])
        for s in range(L - n + 1):
            c_last = torch.nn.functional.cosine_similarity(x[s][rows, last], x[s + n][rows, last], dim=-1)
            ang[s] += (torch.arccos(c_last.clamp(-1, 1)) / math.pi).sum()
            cos[s] += torch.nn.functional.cosine_similarity(x[s], x[s + n], dim=-1)[mask].sum()
        for i in range(L):
            one[i] += torch.nn.functional.cosine_similarity(x[i], x[i + 1], dim=-1)[mask].sum()
        sequences += mask.shape[0]
        tokens += int(mask.sum())
    blocks = [Block(s, s + n) for s in range(1, L - n + 1)]
    bi = 1 - one / tokens
    return {
        "angular-distance": {b: float(ang[b.start] / sequences) for b in blocks},
        "mean-token-cosine": {b: 1 - float(cos[b.start] / tokens) for b in blocks},
        "block-influence": {b: float(bi[b.start:b.end].sum()) for b in blocks},
    }


def greedy(scores: dict[Block, float], count: int, allow_touching: bool) -> list[Block]:
    picked: list[Block] = []
    for block in sorted(scores, key=scores.get):
        clash = any(block.start < p.end + (not allow_touching) and p.start < block.end + (not allow_touching) for p in picked)
        if not clash:
            picked.append(block)
        if len(picked) == count:
            break
    return sorted(picked)


def plan_for(setup, selector: str, layers: int, options=None, compensator="none"):
    model, tokenizer, spec, _ = setup
    method = resolve_method("uidl", options or {}, selector=selector, compensator=compensator)
    adapter = adapter_for(model)
    stats = prepare(model, adapter, [Run(method, layers)], spec, tokenizer, use_cache=False).stats
    ctx = method.selection_context(L, layers)
    return method.selector.select(stats, ctx)


@pytest.mark.parametrize("selector", ["angular-distance", "mean-token-cosine", "block-influence"])
@pytest.mark.parametrize("n", [1, 2])
def test_selector_picks_the_best_block_by_its_own_criterion(setup, selector, n):
    scores = direct_scores(setup[3], n)
    plan = plan_for(setup, selector, n)
    want = min(scores[selector], key=scores[selector].get)
    assert plan.blocks == [want]
    assert plan.scores[0] == pytest.approx(scores[selector][want], rel=1e-9, abs=1e-12)


def test_the_criteria_disagree_on_this_model(setup):
    """Otherwise a swap of two criteria could go unnoticed by the ranking half of the
    test above (its score half catches any swap). For single layers block influence
    *is* 1 − token cosine, by definition; over two layers they differ."""
    one, two = direct_scores(setup[3], 1), direct_scores(setup[3], 2)
    rank = lambda table: sorted(table, key=table.get)  # noqa: E731
    assert rank(one["angular-distance"]) != rank(one["mean-token-cosine"])
    assert rank(one["mean-token-cosine"]) == rank(one["block-influence"])
    assert rank(two["mean-token-cosine"]) != rank(two["block-influence"])


@pytest.mark.parametrize("selector", ["angular-distance", "mean-token-cosine"])
def test_num_blocks_and_merge_consecutive_against_a_direct_greedy_choice(setup, selector):
    scores = direct_scores(setup[3], 1)[selector]
    plan = plan_for(setup, selector, 2, {"num_blocks": 2})
    assert plan.blocks == greedy(scores, 2, allow_touching=True)
    merged = plan_for(setup, selector, 2, {"num_blocks": 2, "merge_consecutive": True})
    picked = greedy(scores, 2, allow_touching=True)
    if picked[0].end == picked[1].start:
        assert merged.blocks == [Block(picked[0].start, picked[1].end)]
    else:
        assert merged.blocks == picked
    # a compensator that writes into the layer before each block keeps blocks apart
    separate = plan_for(setup, selector, 2, {"num_blocks": 2}, compensator="lstsq")
    assert separate.blocks == greedy(scores, 2, allow_touching=False)


def test_a_selector_gets_the_run_seed(tokenizer, calib_file):
    """A selector that draws at random gets --seed through its context: same seed, same plan."""
    import random

    import replaceme
    from replaceme.plugin import Method, Plan, Selector, temporary_plugin

    seen = []

    class RandomSelector(Selector):
        name = "random-block"
        description = "a seeded random block"

        def candidates(self, ctx):
            return [Block(s, s + ctx.layers) for s in range(1, ctx.num_layers - ctx.layers)]

        def select(self, stats, ctx):
            seen.append(ctx.seed)
            return Plan([random.Random(ctx.seed).choice(self.candidates(ctx))])

    spec = CalibrationSpec(str(calib_file), samples=8, max_length=16, batch_size=4)
    with temporary_plugin("random", selectors=[RandomSelector], methods=[Method("random", "random-block", "none")]):
        plans = [replaceme.prune(tiny_model("llama", layers=8), method="random", layers=1, calibration=spec,
                                 tokenizer=tokenizer, seed=seed).plan.blocks for seed in (7, 7, 8)]
    assert seen == [7, 7, 8] and plans[0] == plans[1]
    assert plans[0] == [random.Random(7).choice([Block(s, s + 1) for s in range(1, 7)])]
