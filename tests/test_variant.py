"""Memory-lean variants: every method pruned into a variant gives exactly what it gives
on a deep copy, the base model stays bit-identical, and the variant owns only the
layers its merge writes."""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch
from tiny import tiny_model

from replaceme.registry import adapter_for
from replaceme.calibration import CalibrationSpec, build_calibration
from replaceme.methods import resolve_method
from replaceme.pipeline import apply_method, gather_stats
from replaceme.variant import VARIANT, VersionGuard, make_variant, private_bytes

METHODS = ["block-removal", "uidl", "replaceme-lstsq", "replaceme-cosine", "llm-streamline"]
OPTIONS = {"replaceme-cosine": {"epochs": 2}, "llm-streamline": {"epochs": 1}}


def digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def layer_bytes(layer) -> int:
    return sum(t.numel() * t.element_size() for t in layer.state_dict().values())


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    from tiny import calibration_text, make_tokenizer

    tokenizer = make_tokenizer()
    path = calibration_text(tmp_path_factory.mktemp("calib") / "calib.txt", records=40)
    model = tiny_model("llama", layers=6)  # tied embeddings
    adapter = adapter_for(model)
    resolved = {m: resolve_method(m, dict(OPTIONS.get(m, {}))) for m in METHODS}
    request = None
    for r in resolved.values():
        req = r.stats_request(6, 2)
        request = req if request is None else request.union(req)
    calib = build_calibration(CalibrationSpec(str(path), samples=24, max_length=40, batch_size=4), tokenizer)
    stats = gather_stats(model, adapter, calib, request, use_cache=False)
    return model, adapter, resolved, stats, tokenizer


@pytest.mark.parametrize("method", METHODS)
def test_variant_equals_deepcopy_and_leaves_the_base_intact(method, setting, tmp_path):
    model, adapter, resolved, stats, tokenizer = setting
    before = digest(model)
    ids = torch.randint(4, 100, (2, 12))

    torch.manual_seed(0)
    reference = copy.deepcopy(model)
    apply_method(reference, adapter, resolved[method], 2, stats, seed=0)
    torch.manual_seed(0)
    outcome = apply_method(model, adapter, resolved[method], 2, stats, seed=0, target=VARIANT)
    pruned = outcome.model

    assert digest(model) == before, "the base model changed"
    assert adapter.num_layers(model) == 6 and model.config.num_hidden_layers == 6
    assert digest(pruned) == digest(reference)
    assert pruned.config.num_hidden_layers == 4
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, reference(ids).logits, rtol=0, atol=0)
    # tied embeddings stay tied in the variant
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    # the variant owns at most the layers its merger declared; the rest is the base's storage
    own = resolved[method].merger.modifies(outcome.plan, outcome.compensations)
    budget = sum(layer_bytes(adapter.layers(model)[i]) for i in own)
    if method == "llm-streamline":  # the trained replacement layer is new by nature
        budget += layer_bytes(adapter.layers(model)[0])
    assert private_bytes(pruned, model) <= budget
    # generation with the KV cache, as on the deep copy
    gen = dict(max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(pruned.generate(ids, **gen), reference.generate(ids, **gen))
    # a variant saves and reloads like any model
    from transformers import AutoModelForCausalLM

    pruned.save_pretrained(tmp_path / "variant")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "variant").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, reference(ids).logits, rtol=0, atol=0)
    assert digest(model) == before


def test_casting_a_variant_leaves_the_base(setting):
    model, adapter, *_ = setting
    before = digest(model)
    variant = make_variant(model, adapter, own=[])
    assert private_bytes(variant, model) == 0
    variant.to(torch.float64)
    assert next(variant.parameters()).dtype == torch.float64
    assert next(model.parameters()).dtype == torch.float32 and digest(model) == before


def test_version_guard_sees_in_place_writes_to_shared_weights(setting):
    model, adapter, *_ = setting
    variant = make_variant(model, adapter, own=[1])
    guard = VersionGuard(model)
    with torch.no_grad():
        adapter.mlp_out(variant, 1).weight.mul_(2.0)  # owned: the base is untouched
    assert guard.modified() == []
    with torch.no_grad():
        adapter.mlp_out(variant, 2).weight.mul_(1.0)  # shared: reaches the base (value unchanged here)
    assert guard.modified() == ["model.layers.2.mlp.down_proj.weight"]


def _rogue_merger(declared):
    """A merger that writes into a layer it does not declare (the guard must stop compare)."""
    from replaceme.plugin import Merger, remove_layers

    class RogueMerger(Merger):
        name = "rogue-write"
        description = "test"

        def merge(self, model, adapter, plan, compensations):
            with torch.no_grad():
                adapter.mlp_out(model, 0).weight.mul_(0.5)
            remove_layers(model, adapter, {i for b in plan.blocks for i in range(b.start, b.end)})

        def modifies(self, plan, compensations):
            return declared

    return RogueMerger


@pytest.mark.parametrize("declared", [set(), pytest.param({0}, marks=pytest.mark.slow),
                                      pytest.param(None, marks=pytest.mark.slow)])
def test_compare_stops_when_a_merger_writes_undeclared_layers(declared, tmp_path, tokenizer):
    from click.testing import CliRunner
    from tiny import calibration_text

    from replaceme.cli import cli
    from replaceme.plugin import Method, temporary_plugin

    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    calib = calibration_text(tmp_path / "calib.txt", records=20)
    with temporary_plugin("rogue-test", mergers=[_rogue_merger(declared)],
                          methods=[Method("rogue", "angular-distance", "none", "rogue-write")]):
        result = CliRunner().invoke(cli, ["compare", str(model_dir), "-m", "rogue", "-m", "uidl", "--layers", "1",
                                          "--calib", str(calib), "--calib-samples", "8", "--max-length", "32",
                                          "--ppl", str(calib), "--context-length", "32", "--json"])
    if declared == set():
        assert result.exit_code != 0
        assert "Merger.modifies" in result.output and "model.layers.0.mlp.down_proj.weight" in result.output
    else:  # declared, or unknown (every layer owned): the base stays intact and both rows finish
        assert result.exit_code == 0, result.output
