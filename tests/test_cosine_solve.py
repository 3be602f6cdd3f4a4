"""``cosine_solve.fit_transform`` against closed forms: a planted map on noise-free
data is recovered with the loss going to 0 (cosine loss: up to the scale it cannot
see), the ``mse`` loss reaches the least-squares solution, and the ``accurate``
offset is honoured."""

from __future__ import annotations

import torch
from replaceme_linear.cosine_solve import fit_transform

N, H = 512, 8


def planted(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, H, generator=gen)
    t_true = torch.eye(H) + 0.3 * torch.randn(H, H, generator=gen)
    return gen, x, t_true


def test_cosine_loss_recovers_a_planted_map_up_to_scale():
    _, x, t_true = planted()
    fit = fit_transform(x, x @ t_true, loss="cosine", solver="lbfgs", lbfgs_steps=200)
    assert fit.history[-1] < 1e-8 < fit.history[0]
    scale = float((fit.transform * t_true).sum() / (t_true * t_true).sum())
    torch.testing.assert_close(fit.transform / scale, t_true, rtol=1e-3, atol=1e-3)


def test_mse_loss_reaches_the_least_squares_solution():
    gen, x, t_true = planted(1)
    y = x @ t_true + 0.5 * torch.randn(N, H, generator=gen)  # noise: the optimum is not t_true
    closed = torch.linalg.lstsq(x.double(), y.double()).solution.float()
    fit = fit_transform(x, y, loss="mse", solver="lbfgs", lbfgs_steps=200)
    torch.testing.assert_close(fit.transform, closed, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(closed, t_true, atol=1e-2)


def test_adam_drives_the_loss_to_zero_on_noise_free_data():
    _, x, t_true = planted(2)
    fit = fit_transform(x, x @ t_true, loss="mse", solver="adam", epochs=400, lr=0.02, batch_tokens=N, seed=0)
    assert fit.steps == 400 and fit.history[-1] < 1e-4 * fit.history[0]
    torch.testing.assert_close(fit.transform, t_true, rtol=2e-2, atol=2e-2)


def test_offset_is_added_before_the_loss():
    gen, x, t_true = planted(3)
    z = torch.randn(N, H, generator=gen)
    fit = fit_transform(x, x @ t_true + z, offset=z, loss="mse", solver="lbfgs", lbfgs_steps=200)
    torch.testing.assert_close(fit.transform, t_true, rtol=1e-3, atol=1e-3)
