"""Held-out diagnostics of a linear map: closed forms on planted data, and end to end
against a recomputation from hooked activations of the held-out batches."""

from __future__ import annotations

import copy

import torch
from replaceme_linear.diagnostics import heldout_diagnostics
from tiny import boundary_states, tiny_model

import replaceme
from replaceme.calibration import CalibrationSpec, build_calibration
from replaceme.registry import adapter_for
from replaceme.stats.collect import split_batches


def test_a_planted_map_has_no_heldout_residual_and_the_identity_its_closed_form():
    gen = torch.Generator().manual_seed(0)
    m, xs = torch.randn(200, 8, generator=gen, dtype=torch.float64), torch.randn(200, 8, generator=gen, dtype=torch.float64)
    t = torch.eye(8, dtype=torch.float64) + 0.2 * torch.randn(8, 8, generator=gen, dtype=torch.float64)
    xe = xs - m + m @ t  # so that Y = x_e − x_s + m = m T exactly
    d = heldout_diagnostics(m, xs, xe, t)
    assert d["heldout_tokens"] == 200 and d["heldout_rel_residual"] < 1e-12 and abs(d["heldout_cosine"] - 1) < 1e-12
    y = m @ t
    assert abs(d["identity_rel_residual"] - float((m - y).norm() / y.norm())) < 1e-12
    cos = torch.nn.functional.cosine_similarity(m, y, dim=-1).mean()
    assert abs(d["identity_cosine"] - float(cos)) < 1e-12


def test_lstsq_diagnostics_are_measured_on_the_heldout_batches(tokenizer, calib_file):
    spec = CalibrationSpec(str(calib_file), samples=40, max_length=32, batch_size=4, seed=0)
    base = tiny_model("llama")
    result = replaceme.prune(copy.deepcopy(base), method="replaceme-lstsq", layers=1, calibration=spec,
                             tokenizer=tokenizer, use_cache=False)
    (comp,) = result.outcome.compensations
    s, e = comp.block.start, comp.block.end
    calib = build_calibration(spec, tokenizer)
    holdout, _ = split_batches(calib, 0, 8192, spec.seed, holdout_fraction=spec.holdout_fraction)
    assert holdout, "the spec must hold batches out for this test"

    adapter = adapter_for(base)
    mlp_out: list[torch.Tensor] = []
    handle = adapter.mlp_residual(base, s - 1).register_forward_hook(lambda mod, a, out: mlp_out.append(out.double()))
    states = boundary_states(base, adapter, calib)
    handle.remove()
    rows = [(mlp_out[b][mask], x[s][mask], x[e][mask]) for b, (mask, x) in enumerate(states) if b in holdout]
    m, xs, xe = (torch.cat([r[i] for r in rows]) for i in range(3))
    y = xe - xs + m
    pred = m @ comp.transform
    assert comp.diagnostics["heldout_tokens"] == m.shape[0]
    assert abs(comp.diagnostics["heldout_rel_residual"] - float((pred - y).norm() / y.norm())) < 1e-6
    assert abs(comp.diagnostics["identity_rel_residual"] - float((m - y).norm() / y.norm())) < 1e-6
    assert comp.diagnostics["heldout_rel_residual"] < comp.diagnostics["identity_rel_residual"]
