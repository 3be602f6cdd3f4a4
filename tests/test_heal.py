"""Healing (the fourth stage): losses against closed forms, LoRA merge against the
unmerged adapters, ``transform`` touching only what the compensation wrote, the
teacher never written, resume and reproducibility, and the saved output loading
with plain transformers."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from tiny import calibration_text, make_tokenizer, tiny_model

from replaceme.calibration import CalibrationSpec, build_calibration
from replaceme.errors import ReplacemeError
from replaceme.healing.objective import ce_sum, kd_sum, loss_sum
from replaceme.healing.run import heal_context, heal_outcome
from replaceme.methods import resolve_method
from replaceme.pipeline import apply_method, gather_stats
from replaceme.registry import adapter_for
from replaceme.variant import VARIANT

SMALL = {"heal.steps": 4, "heal.batch_size": 4, "heal.seq_len": 16, "heal.heldout": 2, "heal.eval_every": 2,
         "heal.warmup": 1}


def digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    tokenizer = make_tokenizer()
    path = calibration_text(tmp_path_factory.mktemp("calib") / "calib.txt", records=40)
    model = tiny_model("llama", layers=5)
    adapter = adapter_for(model)
    spec = CalibrationSpec(str(path), samples=24, max_length=40, batch_size=4)
    request = None
    for m in ("uidl", "replaceme-lstsq", "llm-streamline"):
        req = resolve_method(m, {"epochs": 1} if m == "llm-streamline" else {}).stats_request(5, 1)
        request = req if request is None else request.union(req)
    stats = gather_stats(model, adapter, build_calibration(spec, tokenizer), request, use_cache=False)
    return model, adapter, tokenizer, spec, request, stats


def pruned(setting, method, healer, **options):
    model, adapter, tokenizer, spec, request, stats = setting
    opts = {**SMALL, **({"epochs": 1} if method == "llm-streamline" else {}), **options}
    resolved = resolve_method(method, opts, healer=healer)
    outcome = apply_method(model, adapter, resolved, 1, stats, target=VARIANT)
    return resolved, outcome


def healed(setting, method, healer, **options):
    model, adapter, tokenizer, spec, request, stats = setting
    resolved, outcome = pruned(setting, method, healer, **options)
    free = {n: t.clone() for n, t in outcome.model.state_dict().items()}
    out, record = heal_outcome(model, adapter, resolved, outcome, tokenizer, None, calibration=spec, request=request)
    return resolved, outcome, free, out, record


# ------------------------------------------------------------------ objective


def test_kd_is_zero_for_a_copy_of_the_teacher_and_the_closed_form_otherwise():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(2, 6, 11, generator=gen)
    s = torch.randn(2, 6, 11, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert float(kd_sum(t.clone(), t, mask)) == 0.0
    tau = 2.0
    expected = 0.0
    for b in range(2):
        for i in range(5):
            if mask[b, i] and mask[b, i + 1]:  # next-token positions with both tokens real
                p = torch.softmax(t[b, i].double() / tau, -1)
                q = torch.softmax(s[b, i].double() / tau, -1)
                expected += float((p * (p / q).log()).sum()) * tau**2
    assert float(kd_sum(s, t, mask, tau)) == pytest.approx(expected, rel=1e-5)


def test_ce_skips_pads_and_mixes_with_kd():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=gen)
    ids = torch.randint(0, 7, (2, 5), generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    expected = sum(-float(torch.log_softmax(logits[b, i].double(), -1)[ids[b, i + 1]])
                   for b in range(2) for i in range(4) if mask[b, i + 1])
    assert float(ce_sum(logits, ids, mask)) == pytest.approx(expected, rel=1e-6)
    teacher = torch.randn(2, 5, 7, generator=gen)
    mixed = loss_sum("kd", logits, ids, mask, teacher, 1.0, 0.25)
    assert float(mixed) == pytest.approx(0.75 * float(kd_sum(logits, teacher, mask)) + 0.25 * expected, rel=1e-6)


def test_kd_of_an_unpruned_student_is_zero(setting):
    model, adapter, tokenizer, *_ = setting
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        copy_logits = __import__("copy").deepcopy(model)(input_ids=ids).logits
    assert float(kd_sum(copy_logits, logits, mask)) == 0.0
    assert F.kl_div(copy_logits.log_softmax(-1), logits.log_softmax(-1), log_target=True, reduction="batchmean").item() == 0.0


# ------------------------------------------------------------------ healers


def test_lora_merge_gives_the_logits_of_the_unmerged_adapters(setting):
    model, adapter, *_ = setting
    before = digest(model)
    resolved, outcome = pruned(setting, "uidl", "lora")
    ctx = heal_context(model, adapter, resolved, outcome)
    count = sum(p.numel() for p in outcome.model.parameters())
    torch.manual_seed(0)
    wrapped = resolved.healer.prepare(outcome.model, ctx)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:  # zero at initialisation: give the adapters a real effect
                p.normal_(0, 0.5)
    ids = torch.randint(0, 50, (2, 10))
    wrapped.eval()
    with torch.no_grad():
        unmerged = wrapped(input_ids=ids).logits
        merged_model = resolved.healer.finish(wrapped, ctx)
        merged = merged_model(input_ids=ids).logits
        plain = model(input_ids=ids).logits
    assert not torch.allclose(unmerged, plain, atol=1e-3)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert not any("lora" in n for n, _ in merged_model.named_parameters())
    assert sum(p.numel() for p in merged_model.parameters()) == count
    assert digest(model) == before  # the merge wrote new tensors, not the shared ones


@pytest.mark.parametrize("method", ["replaceme-lstsq", "uidl", "llm-streamline"])
def test_transform_changes_nothing_but_what_the_compensation_wrote(setting, method):
    model, adapter, *_ = setting
    before = digest(model)
    resolved, outcome, free, out, record = healed(setting, method, "transform")
    block = outcome.plan.blocks[0]
    if method == "llm-streamline":  # the replacement layer sits in the block's first slot
        expected = {n for n in free if n.startswith(f"model.layers.{block.start}.")}
    else:  # a folded map, or (uidl) the projection it would be folded into: layer start-1's down_proj
        expected = {f"model.layers.{block.start - 1}.mlp.down_proj.weight"}
    changed = {n for n, t in out.state_dict().items() if not torch.equal(t, free[n])}
    assert changed and changed <= expected
    assert set(record.trained) == expected
    assert digest(model) == before


def test_full_healing_lowers_the_heldout_loss_and_leaves_the_teacher(setting):
    model, *_ = setting
    before = digest(model)
    *_, out, record = healed(setting, "uidl", "full", **{"heal.steps": 8, "heal.eval_every": 4, "heal.lr": 1e-2,
                                                         "heal.objective": "ce"})
    loss = record.to_dict()["loss"]
    assert loss["heldout_end"] < loss["heldout_start"]
    assert record.state.tokens_seen == 8 * 4 * 15  # 8 steps of 4 packed sequences, 15 next-token positions each
    assert digest(model) == before


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(setting):
    model, adapter, tokenizer, spec, request, stats = setting
    opts = {"heal.steps": 6, "heal.checkpoint_every": 2, "heal.eval_every": 3}

    def run(stop_at=None):
        resolved, outcome = pruned(setting, "replaceme-lstsq", "full", **opts)

        def on_step(state):
            if state.step == stop_at:
                raise KeyboardInterrupt

        return heal_outcome(model, adapter, resolved, outcome, tokenizer, None, calibration=spec, request=request,
                            on_step=on_step)

    reference, ref_record = run()
    with pytest.raises(KeyboardInterrupt):
        run(stop_at=5)  # killed after the checkpoint of step 4
    resumed, record = run()
    assert record.state.resumed_from == 4
    assert ref_record.state.resumed_from is None
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert record.state.heldout_curve == ref_record.state.heldout_curve
    again, _ = run()  # the finished run deleted its checkpoint: a fresh run, same seed, same weights
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), again.state_dict().values()))


# ------------------------------------------------------------------ options


def test_healer_options_are_routed_and_ambiguity_is_refused():
    r = resolve_method("uidl", {"steps": 7, "heal.lr": 0.5, "rank": 4}, healer="lora")
    assert (r.healer.options.steps, r.healer.options.lr, r.healer.options.rank) == (7, 0.5, 4)
    assert r.label == "uidl+lora" and "healer:lora" in r.options()
    with pytest.raises(ReplacemeError, match="heal.objective"):  # the calibration-loss selector has 'objective' too
        resolve_method("replaceme-lstsq-loss", {"objective": "kd"}, healer="full")
    assert resolve_method("replaceme-lstsq-loss", {"heal.objective": "ce"}, healer="full").healer.options.objective == "ce"
    with pytest.raises(ReplacemeError, match="no healer"):
        resolve_method("uidl", {"heal.steps": 3})
    with pytest.raises(ReplacemeError, match="unknown healer"):
        resolve_method("uidl", healer="lorra")
    with pytest.raises(ReplacemeError, match="rank"):
        resolve_method("uidl", {"heal.rank": 0}, healer="lora")


def test_a_recipe_can_default_to_a_healer():
    from replaceme.components import Method
    from replaceme.hookspecs import hookimpl
    from replaceme.registry import register_plugin, unregister_plugin

    class Plugin:
        @hookimpl
        def register_methods(self, register):
            register(Method("uidl-healed", "angular-distance", "none", "remove", healer="lora",
                            defaults={"healer": {"rank": 2}}))

    register_plugin(Plugin(), "healed-recipe")
    try:
        r = resolve_method("uidl-healed")
        assert r.healer.name == "lora" and r.healer.options.rank == 2 and r.label == "uidl-healed+lora"
        assert resolve_method("uidl-healed", healer="none").healer is None
        assert resolve_method("uidl-healed", healer="full").healer.name == "full"  # recipe defaults stay with lora
    finally:
        unregister_plugin("healed-recipe")


def test_memory_estimate_refuses_what_cannot_fit(setting):
    from replaceme.healing.memory import check_fits, estimate

    resolved, outcome = pruned(setting, "uidl", "full", **{"heal.micro_batch": 4096, "heal.seq_len": 1 << 20})
    for p in outcome.model.parameters():
        p.requires_grad_(True)
    est = estimate(outcome.model, outcome.model.config, 4, resolved.healer.options, shared_bytes=0,
                   checkpointing=False)
    assert est.gradients == sum(p.numel() * 4 for p in outcome.model.parameters())
    assert est.optimizer == 2 * est.gradients
    with pytest.raises(ReplacemeError, match="healer 'full' needs about"):
        check_fits(est, "cpu", "full")


# ------------------------------------------------------------------ end to end


def test_healed_output_loads_with_plain_transformers(tmp_path, tiny_dir, calib_file):
    import json

    from transformers import AutoModelForCausalLM

    import replaceme

    spec = CalibrationSpec(str(calib_file), samples=16, max_length=32, batch_size=4)
    free = replaceme.prune(str(tiny_dir), method="uidl", layers=1, calibration=spec)
    result = replaceme.prune(str(tiny_dir), method="uidl", layers=1, calibration=spec, heal="lora",
                             heal_data=str(calib_file), options=dict(SMALL))
    replaceme.save_pruned(result, tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    count = sum(p.numel() for p in loaded.parameters())
    assert count == sum(p.numel() for p in free.model.parameters())
    ids = torch.randint(0, 50, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, result.model(input_ids=ids).logits)
    meta = json.loads((tmp_path / "out" / "pruning.json").read_text())
    heal = meta["healing"]
    assert heal["healer"] == "lora" and heal["options"]["rank"] == 8 and heal["steps"] == 4
    assert heal["tokens_seen"] > 0 and heal["data"]["source"] == str(calib_file)
    assert set(heal["loss"]) >= {"heldout_start", "heldout_end", "heldout_best"}
    assert meta["method"] == "uidl+lora" and "heal" in meta["usage"]
    assert "Healing" in (tmp_path / "out" / "README.md").read_text()
