"""The plan scorer and the selectors built on it (calibration-loss, SLEB), checked
against a direct computation: prune an independent copy of the model with the
surgery helpers and evaluate it with a plain forward pass from the embeddings."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tiny import calibration_text, tiny_model

from replaceme.registry import adapter_for
from replaceme.calibration import CalibrationSpec, build_calibration
from replaceme.methods import resolve_method
from replaceme.pipeline import apply_method, gather_stats
from replaceme.plan import Block, Plan
from replaceme.scoring import PlanScorer
from replaceme.surgery import fold_linear_map, remove_layers


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tiny import make_tokenizer

    path = calibration_text(tmp_path_factory.mktemp("c") / "calib.txt", records=48)
    model = tiny_model("llama", layers=6)
    calib = build_calibration(CalibrationSpec(str(path), samples=44, max_length=40, batch_size=4), make_tokenizer())
    return model, calib


def direct(model, batches, ref=None):
    """(mean next-token CE, mean KL to ``ref``) over real positions, by a full forward pass."""
    ce = kl = n = 0.0
    with torch.no_grad():
        for b in batches:
            logits = model(input_ids=b.input_ids, attention_mask=b.mask.long()).logits
            valid = b.mask[:, :-1] & b.mask[:, 1:]
            logp = torch.log_softmax(logits[:, :-1][valid].double(), -1)
            ce -= float(logp.gather(1, b.input_ids[:, 1:][valid][:, None]).sum())
            if ref is not None:
                rl = torch.log_softmax(ref(input_ids=b.input_ids, attention_mask=b.mask.long()).logits[:, :-1][valid].double(), -1)
                kl += float((rl.exp() * (rl - logp)).sum())
            n += int(valid.sum())
    return ce / n, kl / n


def make_scorer(model, calib, method, layers, selector=None, **opts):
    resolved = resolve_method(method, opts, selector=selector)
    adapter = adapter_for(model)
    stats = gather_stats(model, adapter, calib, resolved.stats_request(6, layers), use_cache=False)
    return PlanScorer(model, adapter, stats, resolved.compensator, resolved.merger), resolved, stats


def test_scores_match_a_pruned_copy_evaluated_from_the_embeddings(setup):
    model, calib = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scorer, _, stats = make_scorer(model, calib, "sleb", 2)
    assert stats.sample.holdout, "44 sequences in batches of 4 hold some batches out"
    plan = Plan([Block(2, 3), Block(4, 5)])
    got = scorer.score(plan)
    pruned = copy.deepcopy(model)
    remove_layers(pruned, adapter_for(pruned), {2, 4})
    ce, kl = direct(pruned, stats.sample.holdout, ref=model)
    assert scorer._fast, "the cached-state path reproduces a llama's logits"
    assert got.loss == pytest.approx(ce, rel=1e-5) and got.kl == pytest.approx(kl, rel=1e-4, abs=1e-9)
    assert got.ppl == pytest.approx(math.exp(ce), rel=1e-5)
    for k, v in model.state_dict().items():  # the unpruned model is never written
        assert torch.equal(v, before[k]), k


def test_lstsq_scores_apply_the_compensation(setup):
    model, calib = setup
    scorer, _, stats = make_scorer(model, calib, "replaceme-lstsq", 1, selector="calibration-loss")
    block = Block(3, 4)
    got = scorer.score(Plan([block]))
    (comp,) = scorer.compensations(Plan([block]))
    pruned = copy.deepcopy(model)
    fold_linear_map(pruned, adapter_for(pruned), 2, comp.transform)
    remove_layers(pruned, adapter_for(pruned), {3})
    ce, _ = direct(pruned, stats.sample.holdout)
    assert got.loss == pytest.approx(ce, rel=1e-5)
    plain = PlanScorer(model, scorer.adapter, stats, resolve_method("uidl").compensator, resolve_method("uidl").merger)
    assert plain.score(Plan([block])).loss != pytest.approx(got.loss, rel=1e-6)


@pytest.mark.parametrize("layers", [1, 2])
def test_calibration_loss_picks_the_block_with_the_lowest_held_out_loss(setup, layers):
    model, calib = setup
    scorer, resolved, stats = make_scorer(model, calib, "replaceme-lstsq", layers, selector="calibration-loss")
    truth = {}
    for s in range(1, 7 - layers):
        (comp,) = scorer.compensations(Plan([Block(s, s + layers)]))
        pruned = copy.deepcopy(model)
        fold_linear_map(pruned, adapter_for(pruned), s - 1, comp.transform)
        remove_layers(pruned, adapter_for(pruned), set(range(s, s + layers)))
        truth[s] = direct(pruned, stats.sample.holdout)[0]
    outcome = apply_method(copy.deepcopy(model), adapter_for(model), resolved, layers, stats)
    best = min(truth, key=truth.get)
    assert outcome.plan.blocks == [Block(best, best + layers)]
    reported = {r["block"][0]: r["loss"] for r in outcome.plan.details["candidates"]}
    assert reported == pytest.approx(truth, rel=1e-5)
    assert outcome.layers_after == 6 - layers


def test_kl_objective_picks_the_lowest_kl(setup):
    model, calib = setup
    _, resolved, stats = make_scorer(model, calib, "replaceme-lstsq", 2, selector="calibration-loss", objective="kl")
    outcome = apply_method(copy.deepcopy(model), adapter_for(model), resolved, 2, stats)
    rows = outcome.plan.details["candidates"]
    best = min(rows, key=lambda r: r["kl"])
    assert outcome.plan.blocks == [Block(*best["block"])] and outcome.plan.scores == [best["kl"]]
    assert all(r["kl"] > 0 for r in rows)


def test_shortlist_scores_only_the_closest_blocks(setup):
    model, calib = setup
    _, resolved, stats = make_scorer(model, calib, "replaceme-lstsq", 1, selector="calibration-loss", shortlist=2)
    outcome = apply_method(copy.deepcopy(model), adapter_for(model), resolved, 1, stats)
    scored = {tuple(r["block"]) for r in outcome.plan.details["candidates"]}
    closest = sorted(range(1, 6), key=lambda s: float(stats.angular[1][s]))[:2]
    assert scored == {(s, s + 1) for s in closest}


@pytest.mark.slow
def test_sleb_is_greedy_on_the_current_model(setup):
    model, calib = setup
    scorer, resolved, stats = make_scorer(model, calib, "sleb", 2)
    batches = stats.sample.holdout + stats.sample.train
    removed: list[int] = []
    for _ in range(2):
        losses = {}
        for i in range(6):
            if i in removed:
                continue
            pruned = copy.deepcopy(model)
            remove_layers(pruned, adapter_for(pruned), {*removed, i})
            losses[i] = direct(pruned, batches)[0]
        removed.append(min(losses, key=losses.get))
    outcome = apply_method(copy.deepcopy(model), adapter_for(model), resolved, 2, stats)
    assert [b.start for b in outcome.plan.blocks] == sorted(removed)
    assert [r["removed"] for r in outcome.plan.details["rounds"]] == removed


def test_without_held_out_batches_calibration_loss_refuses_or_falls_back(tmp_path):
    from tiny import make_tokenizer

    from replaceme.errors import ReplacemeError

    path = calibration_text(tmp_path / "c.txt", records=8)
    model = tiny_model("llama", layers=6)
    calib = build_calibration(CalibrationSpec(str(path), samples=8, max_length=32, batch_size=4), make_tokenizer())
    _, resolved, stats = make_scorer(model, calib, "replaceme-lstsq", 1, selector="calibration-loss", fallback_tokens=0)
    with pytest.raises(ReplacemeError, match="held-out"):
        apply_method(copy.deepcopy(model), adapter_for(model), resolved, 1, stats)
    # by default it falls back to (fitted) training batches, and says so
    _, resolved, stats = make_scorer(model, calib, "replaceme-lstsq", 1, selector="calibration-loss")
    outcome = apply_method(copy.deepcopy(model), adapter_for(model), resolved, 1, stats)
    assert outcome.plan.details["scored_on"] == "all" and outcome.layers_after == 5


@pytest.mark.slow
@pytest.mark.parametrize(("layers", "block"), [(1, Block(2, 3)), (2, Block(3, 5))])
def test_calibration_loss_finds_the_block_held_out_text_rewards(shared, layers, block):
    """On stories260K the angular pick is [3,4) / [2,4); held-out perplexity after
    LSTSQ prefers [2,3) / [3,5) (measured on valid.txt[3000:], README)."""
    import replaceme

    spec = CalibrationSpec(str(shared / "data" / "tinystories" / "valid.txt"))
    result = replaceme.prune(str(shared / "models" / "stories260K"), method="replaceme-lstsq", layers=layers,
                             calibration=spec, selector="calibration-loss", use_cache=False)
    assert result.plan.blocks == [block]
    assert len(result.plan.details["candidates"]) == 5 - layers


@pytest.mark.slow
def test_distances_loss_column_is_the_scorer_on_each_block(tmp_path):
    """``replaceme distances --loss`` reports, per block, the held-out loss of the
    block compensated by the method: the same number as pruning that block alone."""
    import json

    from click.testing import CliRunner
    from tiny import make_tokenizer

    import replaceme
    from replaceme.cli import cli

    model_dir = tmp_path / "m"
    tiny_model("llama", layers=6).save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    calib = calibration_text(tmp_path / "c.txt", records=48)
    args = ["--calib", str(calib), "--calib-samples", "44", "--max-length", "40", "--batch-size", "4"]
    result = CliRunner().invoke(cli, ["distances", str(model_dir), "-n", "2", "--loss", "--json",
                                       "--plot", str(tmp_path / "b.png"), *args])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 9 and sum(r["best_loss"] for r in rows) == 2
    spec = CalibrationSpec(str(calib), samples=44, max_length=40, batch_size=4)
    for layers in (1, 2):
        pruned = replaceme.prune(str(model_dir), method="replaceme-lstsq", selector="calibration-loss", layers=layers,
                                 calibration=spec)
        best = min((r for r in rows if r["size"] == layers), key=lambda r: r["loss"])
        assert pruned.plan.blocks == [Block(best["start"], best["end"])]
        assert pruned.plan.scores[0] == pytest.approx(best["loss"], rel=1e-6)
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
