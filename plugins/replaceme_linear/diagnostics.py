"""How well a linear map replaces a block, measured on held-out tokens."""

from __future__ import annotations

import math
from typing import Any

import torch


def block_tokens(batches: list[Any], start: int, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack non-pad tokens of ``m_{s-1}``, ``x_s``, ``x_e`` from sample batches: three
    ``[N, h]`` in the stored dtype (callers convert, in chunks where memory matters)."""
    m = torch.cat([b.mlp[start - 1][b.mask] for b in batches])
    xs = torch.cat([b.boundaries[start][b.mask] for b in batches])
    xe = torch.cat([b.boundaries[end][b.mask] for b in batches])
    return m, xs, xe


def fit_quality(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, chunk: int = 1024) -> dict[str, float]:
    """Relative residual ``‖XT − Y‖/‖Y‖`` and mean token cosine ``cos(XT, Y)``, in float64,
    ``chunk`` tokens at a time (no full-size float64 copies)."""
    t = t.to(torch.float64)
    err = norm = cos = 0.0
    for lo in range(0, x.shape[0], chunk):
        xc, yc = x[lo : lo + chunk].to(torch.float64), y[lo : lo + chunk].to(torch.float64)
        pred = xc @ t
        err += float(((pred - yc) ** 2).sum())
        norm += float((yc * yc).sum())
        cos += float(torch.nn.functional.cosine_similarity(pred, yc, dim=-1, eps=1e-12).sum())
    return {"rel_residual": math.sqrt(err) / max(math.sqrt(norm), 1e-30), "cosine": cos / max(x.shape[0], 1)}


def heldout_diagnostics(m: torch.Tensor, xs: torch.Tensor, xe: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
    """Held-out quality of T and of the identity (plain removal), from ``[N, h]`` token activations."""
    m, xs, xe = (a.to("cpu") for a in (m, xs, xe))
    y = xe.to(torch.float64) - xs.to(torch.float64) + m.to(torch.float64)
    eye = torch.eye(t.shape[0], dtype=torch.float64)
    mapped, identity = fit_quality(m, y, t.to("cpu", torch.float64)), fit_quality(m, y, eye)
    return {
        "heldout_tokens": int(m.shape[0]),
        "heldout_rel_residual": mapped["rel_residual"],
        "heldout_cosine": mapped["cosine"],
        "identity_rel_residual": identity["rel_residual"],
        "identity_cosine": identity["cosine"],
    }


def rerun_block_tokens(model: Any, adapter: Any, batches: list[Any], start: int, end: int) -> tuple[torch.Tensor, ...]:
    """Run ``batches`` through ``model`` again (the shared pass's own hooks) and return
    ``m_{s-1}``, ``x_s``, ``x_e`` of its non-pad tokens — for a model already partly pruned."""
    from replaceme.calibration import CalibrationData, CalibrationSpec
    from replaceme.stats import StatsRequest, collect_stats

    calib = CalibrationData([b.input_ids for b in batches], [b.mask for b in batches], CalibrationSpec("<sample>"))
    request = StatsRequest(sample_tokens=2**62, sample_mlp={start - 1}, sample_boundaries={start, end})
    stats = collect_stats(model, adapter, calib, request, holdout_tokens=0)
    return block_tokens(stats.sample.train, start, end)
