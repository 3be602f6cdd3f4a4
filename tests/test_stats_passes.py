"""Statistics in one pass or two (a distance pass, then the chosen blocks only): the
same pruned model, far smaller statistics, and an estimate that matches what is held."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import tiny_model

import replaceme
from replaceme.calibration import CalibrationSpec
from replaceme.errors import ReplacemeError


def _prune(model, tokenizer, path, method, passes, **options):
    spec = CalibrationSpec(str(path), samples=40, max_length=48, batch_size=4)
    return replaceme.prune(model, method=method, layers=2, calibration=spec, tokenizer=tokenizer, use_cache=False,
                           stats_passes=passes, **options)


@pytest.mark.parametrize("method, options", [("replaceme-lstsq", {}), ("replaceme-cosine", {"lbfgs_steps": 5}),
                                             ("replaceme-lstsq", {"num_blocks": 2})])
def test_two_passes_prune_what_one_pass_does_with_smaller_statistics(tokenizer, calib_file, method, options):
    base = tiny_model("llama", layers=8)
    one = _prune(copy.deepcopy(base), tokenizer, calib_file, method, "1", **options)
    two = _prune(copy.deepcopy(base), tokenizer, calib_file, method, "2", **options)
    assert one.plan.blocks == two.plan.blocks
    for a, b in zip(one.outcome.compensations, two.outcome.compensations):
        assert torch.equal(a.transform, b.transform)  # the same tokens, summed in the same order
    for name, tensor in one.model.state_dict().items():
        assert torch.equal(tensor, two.model.state_dict()[name]), name
    m1, m2 = one.stats_memory, two.stats_memory
    assert (m1["passes"], m2["passes"]) == (1, 2)
    # the estimate logged before the pass is what one pass holds, and a bound for two
    # (made before selection: chosen blocks that touch share a boundary)
    assert (m1["estimate"]["gram_bytes"], m1["estimate"]["sample_bytes"]) == (m1["gram"], m1["sample"])
    assert m2["estimate"]["gram_bytes"] >= m2["gram"] and m2["estimate"]["sample_bytes"] >= m2["sample"]
    assert m2["estimate"]["passes"] == 2 and m2["one_pass_estimate"] == m1["estimate"]
    blocks = len(two.plan.blocks)
    h, L, n = 32, 8, 2 // blocks
    if method == "replaceme-lstsq":
        assert m1["gram"] == 16 * h * h * (L - n) and m2["gram"] == 16 * h * h * blocks
    else:
        assert m1["gram"] == m2["gram"] == 0 and m2["sample"] < m1["sample"] / 3


def test_two_passes_are_refused_for_a_selector_that_scores_plans(tokenizer, calib_file):
    with pytest.raises(ReplacemeError, match="stats-passes 2"):
        _prune(tiny_model("llama", layers=6), tokenizer, calib_file, "replaceme-lstsq", "2",
               selector="calibration-loss")


def test_auto_keeps_one_pass_for_small_statistics(tokenizer, calib_file):
    result = _prune(tiny_model("llama", layers=6), tokenizer, calib_file, "replaceme-lstsq", "auto")
    assert result.stats_memory["passes"] == 1 and result.stats_memory["one_pass_estimate"]["passes"] == 1


def test_two_passes_with_offload_write_what_one_pass_does(tiny_dir, calib_file):
    """Layer by layer, the second pass reads the checkpoint again and folds the same map."""
    spec = CalibrationSpec(str(calib_file), samples=24, max_length=40, batch_size=4)
    results = {}
    for passes in ("1", "2"):
        result = replaceme.prune(str(tiny_dir), method="replaceme-lstsq", layers=2, calibration=spec, device="cpu",
                                 offload=True, use_cache=False, stats_passes=passes)
        results[passes] = result
    one, two = results["1"], results["2"]
    assert one.plan.blocks == two.plan.blocks and two.stats_memory["passes"] == 2
    assert torch.equal(one.outcome.compensations[0].transform, two.outcome.compensations[0].transform)
    assert two.stats_memory["gram"] < one.stats_memory["gram"]


def test_statistics_kept_for_later_runs_give_them_what_all_statistics_do(tokenizer, calib_file):
    """compare frees, after each row, what no later row reads: a run given only its
    remaining request's statistics prunes exactly as with everything gathered."""
    from replaceme.methods import resolve_method
    from replaceme.passes import remaining_request
    from replaceme.pipeline import Run, apply_method, prepare
    from replaceme.registry import adapter_for
    from replaceme.variant import VARIANT

    model = tiny_model("llama", layers=8)
    adapter = adapter_for(model)
    runs = [Run(resolve_method(m, options), 2) for m, options in
            [("replaceme-lstsq", {}), ("replaceme-cosine", {"lbfgs_steps": 5}), ("llm-streamline", {"epochs": 1})]]
    spec = CalibrationSpec(str(calib_file), samples=40, max_length=48, batch_size=4)
    full = prepare(model, adapter, runs, spec, tokenizer, use_cache=False).stats
    kept = copy.deepcopy(full)
    request = remaining_request(kept, runs[1:], 8)
    kept.keep_only(request)
    assert not kept.gram and full.gram  # no later run solves normal equations
    assert kept.sample.nbytes() < full.sample.nbytes()  # only the selected blocks' boundaries
    for run in runs[1:]:
        a = apply_method(model, adapter, run.method, 2, full, target=VARIANT)
        b = apply_method(model, adapter, run.method, 2, kept, target=VARIANT)
        assert a.plan.blocks == b.plan.blocks
        for name, tensor in a.model.state_dict().items():
            assert torch.equal(tensor, b.model.state_dict()[name]), (run.method.label, name)


def test_the_cosine_fit_is_the_same_whatever_its_chunks(tiny_dir, calib_file):
    """The fit's chunks are sized from what the budget leaves, which differs when the sample
    is in RAM or on disk (``--offload``); L-BFGS sums loss and gradient part by part in the
    sample's order, so the map (and the weights) are the same with any chunks."""
    spec = CalibrationSpec(str(calib_file), samples=64, max_length=48, batch_size=4)
    results = {}
    for offload in (False, True):
        results[offload] = replaceme.prune(str(tiny_dir), method="replaceme-cosine", layers=1, calibration=spec,
                                           device="cpu", offload=offload, use_cache=False, memory_budget=3_000_000,
                                           lbfgs_steps=3)
    memory, offloaded = results[False], results[True]
    chunks = [r.outcome.compensations[0].diagnostics["chunk_tokens"] for r in (memory, offloaded)]
    assert chunks[0] != chunks[1] and min(chunks) < memory.stats_memory["estimate"]["sample_slots"]
    assert torch.equal(memory.outcome.compensations[0].transform, offloaded.outcome.compensations[0].transform)
