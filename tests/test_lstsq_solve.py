"""Pure math of the LSTSQ solver against closed forms."""

from __future__ import annotations

import torch
from replaceme_linear.lstsq_solve import condition_number, residual_from_gram, solve_lstsq


def _data(n=2000, h=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g, dtype=torch.float64)
    t = torch.randn(h, h, generator=g, dtype=torch.float64)
    return x, t


def test_recovers_planted_map_to_float64_precision():
    x, t = _data()
    y = x @ t
    sol = solve_lstsq(x.T @ x, x.T @ y)
    assert sol.ridge == 0.0 and not sol.auto_ridge
    torch.testing.assert_close(sol.transform, t, rtol=1e-10, atol=1e-10)


def test_streaming_accumulation_equals_one_shot():
    x, t = _data(n=3000)
    y = x @ t + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xtx = torch.zeros(24, 24, dtype=torch.float64)
    xty = torch.zeros(24, 24, dtype=torch.float64)
    for chunk in range(0, 3000, 137):
        xb, yb = x[chunk : chunk + 137], y[chunk : chunk + 137]
        xtx += xb.T @ xb
        xty += xb.T @ yb
    streamed = solve_lstsq(xtx, xty).transform
    one_shot = torch.linalg.lstsq(x, y).solution
    torch.testing.assert_close(streamed, one_shot, rtol=1e-9, atol=1e-9)
    # residual from the Gram sums equals the residual computed on the tokens
    direct = float(((x @ streamed - y) ** 2).sum())
    assert abs(residual_from_gram(xtx, xty, float((y * y).sum()), streamed) - direct) < 1e-6 * direct


def test_ridge_matches_closed_form():
    x, t = _data(n=500, h=8)
    y = x @ t
    alpha = 3.0
    sol = solve_lstsq(x.T @ x, x.T @ y, alpha=alpha)
    expected = torch.linalg.solve(x.T @ x + alpha * torch.eye(8, dtype=torch.float64), x.T @ y)
    torch.testing.assert_close(sol.transform, expected)


def test_ill_conditioned_system_gets_automatic_ridge():
    x, _ = _data(n=400, h=8)
    x[:, 7] = x[:, 6]  # exactly collinear columns: XᵀX is singular
    y = x @ torch.eye(8, dtype=torch.float64)
    sol = solve_lstsq(x.T @ x, x.T @ y, max_condition=1e8)
    assert sol.auto_ridge and sol.ridge > 0
    assert condition_number(x.T @ x + sol.ridge * torch.eye(8, dtype=torch.float64)) <= 1.01e8
    assert torch.isfinite(sol.transform).all()
    torch.testing.assert_close(x @ sol.transform, y, rtol=1e-4, atol=1e-4)


def test_diagonal_map_is_per_channel_least_squares():
    x, _ = _data(n=1000, h=6)
    scale = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0, 1.5], dtype=torch.float64)
    y = x * scale
    sol = solve_lstsq(x.T @ x, x.T @ y, diag=True)
    torch.testing.assert_close(torch.diagonal(sol.transform), scale)
    assert torch.count_nonzero(sol.transform - torch.diag(torch.diagonal(sol.transform))) == 0
