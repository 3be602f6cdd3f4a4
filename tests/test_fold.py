"""Folding T into what a layer's MLP adds to the residual stream equals applying T
at run time, on every architecture: a dense T into the output projection where
the MLP writes directly, a diagonal one into the post-norm where it does not."""

from __future__ import annotations

import pytest
import torch
from tiny import ARCHS, arch_params, tiny_model

from replaceme.registry import adapter_for
from replaceme.surgery import fold_linear_map

IDS = torch.tensor([[1, 5, 9, 14, 3, 22, 7, 8, 30, 2]])


@pytest.mark.parametrize("arch", arch_params(ARCHS))
def test_fold_equals_runtime_map(arch):
    model = tiny_model(arch)
    adapter = adapter_for(model)
    gen = torch.Generator().manual_seed(1)
    h = model.config.hidden_size
    t = torch.eye(h, dtype=torch.float64) + 0.1 * torch.randn(h, h, generator=gen, dtype=torch.float64)
    if not adapter.mlp_write.direct:
        t = torch.diag(torch.diagonal(t))

    handle = adapter.mlp_residual(model, 2).register_forward_hook(lambda mod, args, out: out @ t.to(out.dtype))
    with torch.no_grad():
        expected = model(IDS, use_cache=False).logits
    handle.remove()

    params_before = sum(p.numel() for p in model.parameters())
    fold_linear_map(model, adapter, 2, t)
    assert sum(p.numel() for p in model.parameters()) == params_before
    with torch.no_grad():
        got = model(IDS, use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
