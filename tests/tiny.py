"""Test helpers shared by every test module: the location of the real model and
data in ../shared, plus the public helpers of :mod:`replaceme.testing` (tiny
random models of each supported architecture, a character-level tokenizer built
offline, calibration text)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from replaceme.testing import (  # noqa: F401  (re-exported for the test modules)
    ARCHS,
    DIRECT_ARCHS,
    POST_NORM_ARCHS,
    calibration_text,
    make_tokenizer,
    tiny_config,
    tiny_model,
)

ROOT = Path(__file__).resolve().parents[1]

#: the architectures the fast tier runs per-architecture matrices on: one whose MLP writes
#: into the residual stream directly, one behind a post-norm (the full tier runs all of ARCHS)
FAST_ARCHS = ("llama", "olmo2")


def arch_params(archs: list[str] = ARCHS) -> list:
    """``archs`` for ``parametrize``, those outside :data:`FAST_ARCHS` marked ``slow``."""
    return [arch if arch in FAST_ARCHS else pytest.param(arch, marks=pytest.mark.slow) for arch in archs]


def shared_dir() -> Path | None:
    """``$REPLACEME_SHARED`` or ``<repo>/../shared``, if it exists."""
    path = Path(os.environ.get("REPLACEME_SHARED", ROOT.parent / "shared"))
    return path if path.is_dir() else None


def boundary_states(model, adapter, calib) -> list[tuple]:
    """Per calibration batch: ``(mask [B, T], [x_0, ..., x_L])`` in float64, read with hooks
    (``x_j`` the input of layer ``j``, ``x_L`` the last layer's output before the final norm)."""
    import torch

    layers = adapter.layers(model)
    states: dict[int, torch.Tensor] = {}

    def keep(j):
        return lambda module, args, out: states.__setitem__(j, (out[0] if isinstance(out, tuple) else out).double())

    hooks = [layer.register_forward_hook(keep(i + 1)) for i, layer in enumerate(layers)]
    hooks.append(layers[0].register_forward_pre_hook(
        lambda module, args, kwargs: states.__setitem__(0, (args[0] if args else kwargs["hidden_states"]).double()),
        with_kwargs=True))
    out = []
    try:
        with torch.no_grad():
            for ids, mask in zip(calib.input_ids, calib.masks):
                model(input_ids=ids, attention_mask=mask.long(), use_cache=False)
                out.append((mask, [states[j] for j in range(len(layers) + 1)]))
    finally:
        for h in hooks:
            h.remove()
    return out
