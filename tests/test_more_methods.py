"""ShortGPT, SLEB and LaCo: their math against direct computations, and a
standard model out of each on the real stories260K."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import calibration_text, make_tokenizer, tiny_model
from transformers import AutoModelForCausalLM

import replaceme
from replaceme.registry import adapter_for
from replaceme.calibration import CalibrationSpec
from replaceme.plan import Block, Plan
from replaceme_laco import RdscCompensator, _mergeable


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return calibration_text(tmp_path_factory.mktemp("c") / "calib.txt", records=48)


def test_shortgpt_removes_the_layers_with_lowest_block_influence(calib):
    model = tiny_model("llama", layers=6)
    tok = make_tokenizer()
    spec = CalibrationSpec(str(calib), samples=24, max_length=40, batch_size=4)
    # BI_i = 1 - mean over real tokens of cos(x_i, x_i+1), from HF's hidden states (pre-norm for i+1 < L)
    from replaceme.calibration import build_calibration

    data = build_calibration(spec, tok)
    sums, count = torch.zeros(5, dtype=torch.float64), 0
    with torch.no_grad():
        for ids, mask in zip(data.input_ids, data.masks):
            hs = model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states
            for i in range(5):
                sums[i] += torch.cosine_similarity(hs[i][mask].double(), hs[i + 1][mask].double(), dim=-1).sum()
            count += int(mask.sum())
    bi = 1 - sums / count
    result = replaceme.prune(copy.deepcopy(model), method="shortgpt", layers=2, calibration=spec, tokenizer=tok)
    got = result.plan.details["block_influence"]
    assert got[:5] == pytest.approx(bi.tolist(), rel=1e-6)
    lowest = sorted(range(6), key=lambda i: got[i])[:2]
    assert [b.start for b in result.plan.blocks] == sorted(lowest)
    assert result.outcome.layers_after == 4


def test_rdsc_is_the_papers_formula_and_merges_compound():
    model = tiny_model("llama", layers=6)
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    theta = [{n: p.detach().double().clone() for n, p in _mergeable(layer).items()} for layer in layers]
    assert "self_attn.q_proj.weight" in theta[0] and "mlp.down_proj.weight" in theta[0]
    assert not any("norm" in n for n in theta[0]), "normalisation weights are kept, not merged"

    from replaceme.components import CompensationContext

    ctx = CompensationContext(model=model, adapter=adapter, stats=None, device="cpu")
    (one,) = RdscCompensator().compensate(Plan([Block(2, 5)]), ctx)
    for n, t in theta[1].items():
        want = t + (theta[2][n] - t) + (theta[3][n] - t) + (theta[4][n] - t)
        assert torch.allclose(one.parameters[n].double(), want, atol=1e-6), n
    # LaCo's order: first 3 absorbs 4, then 1 absorbs 2 and the merged 3
    plan = Plan([Block(2, 5)], details={"compensation": {"merges": [[3, [4]], [1, [2, 3]]]}})
    (comp,) = RdscCompensator().compensate(plan, ctx)
    for n, t in theta[1].items():
        merged3 = theta[3][n] + (theta[4][n] - theta[3][n])
        want = t + (theta[2][n] - t) + (merged3 - t)
        assert torch.allclose(comp.parameters[n].double(), want, atol=1e-6), n


def test_laco_removes_exactly_n_layers_and_records_its_search(calib):
    model = tiny_model("llama", layers=6)
    tok = make_tokenizer()
    spec = CalibrationSpec(str(calib), samples=24, max_length=40, batch_size=4)
    for threshold, forced in ((-1.0, False), (1.0, True)):  # T = -1 accepts everything; T = 1 nothing
        result = replaceme.prune(copy.deepcopy(model), method="laco", layers=3, calibration=spec, tokenizer=tok,
                                 threshold=threshold, merge_layers=2, interval=1)
        details = result.plan.details
        assert result.outcome.layers_after == 3
        assert (details["greedy_below_threshold"] > 0) == forced
        assert all(t["passed"] == (t["similarity"] > threshold) for t in details["tried"])
    # with everything accepted and C = 2, the sweep is the paper's: 4 absorbs 5, 3 absorbs 4... from the top
    accepted = replaceme.prune(copy.deepcopy(model), method="laco", layers=2, calibration=spec, tokenizer=tok,
                               threshold=-1.0, merge_layers=2, interval=1)
    tried = [(t["base"], t["absorbed"]) for t in accepted.plan.details["tried"]]
    assert tried == [(4, [5]), (3, [4, 5])]
    assert accepted.plan.blocks == [Block(4, 6)]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["shortgpt", "sleb", "laco"])
def test_standard_model_on_stories260k(method, shared, tmp_path):
    data = str(shared / "data" / "tinystories" / "valid.txt")
    result = replaceme.prune(str(shared / "models" / "stories260K"), method=method, layers=2,
                             calibration=CalibrationSpec(data, samples=64), use_cache=False)
    replaceme.save_pruned(result, tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert loaded.config.num_hidden_layers == 3 and len(loaded.model.layers) == 3
    ids = torch.tensor([[1, 403, 407, 261, 378]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, result.model(ids).logits, atol=1e-5)
        out = loaded.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape == (1, 13)


def test_cosine_presets_and_the_default_fit(tmp_path):
    """``preset fit`` (default) starts L-BFGS from the LSTSQ map, so its loss ends
    no higher than LSTSQ's and below the reference recipe's (Adam from T = I)."""
    from replaceme.methods import resolve_method

    default = resolve_method("replaceme-cosine").compensator.options
    reference = resolve_method("replaceme-cosine", {"preset": "reference"}).compensator.options
    assert (default.solver, default.init) == ("lbfgs", "lstsq")
    assert (reference.solver, reference.init, reference.epochs, reference.lr, reference.batch_tokens) == (
        "adam", "identity", 10, 1e-4, 1024)
    mixed = resolve_method("replaceme-cosine", {"preset": "reference", "solver": "lbfgs"}).compensator.options
    assert (mixed.solver, mixed.init) == ("lbfgs", "identity")

    path = calibration_text(tmp_path / "c.txt", records=40)
    spec = CalibrationSpec(str(path), samples=40, max_length=40, batch_size=4)
    model, tok = tiny_model("llama", layers=6), make_tokenizer()
    runs = {p: replaceme.prune(copy.deepcopy(model), method="replaceme-cosine", layers=1, calibration=spec, tokenizer=tok,
                               selector="range", start=3, preset=p).outcome.compensations[0].diagnostics
            for p in ("fit", "reference")}
    assert runs["fit"]["loss_last"] <= runs["fit"]["loss_first"] + 1e-7
    assert runs["fit"]["loss_last"] < runs["reference"]["loss_last"]


def test_shortgpt_runs_offloaded(calib, tmp_path):
    # the selectors that score plans by running the model (sleb, laco, calibration-loss) run offloaded
    # too, through the layer-by-layer engine: tests/test_offload_scoring.py
    src = tmp_path / "src"
    tiny_model("llama", layers=6).save_pretrained(src)
    make_tokenizer().save_pretrained(src)
    spec = CalibrationSpec(str(calib), samples=24, max_length=40, batch_size=4)
    shortgpt = replaceme.prune(str(src), method="shortgpt", layers=2, calibration=spec, offload=True, use_cache=False)
    assert shortgpt.outcome.layers_after == 4
