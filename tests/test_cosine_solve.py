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


def _counting_source(x, y, parts: int, chunk_tokens: int):
    """A sample in ``parts`` pieces, recording the largest number of rows read at once."""
    from replaceme_linear.token_stream import ChunkedTokens

    seen = {"max_rows": 0}
    bounds = torch.linspace(0, N, parts + 1).long().tolist()

    def part(lo, hi):
        def read():
            seen["max_rows"] = max(seen["max_rows"], hi - lo)
            return x[lo:hi], y[lo:hi], None

        return read

    source = ChunkedTokens([part(lo, hi) for lo, hi in zip(bounds, bounds[1:])],
                           [hi - lo for lo, hi in zip(bounds, bounds[1:])], chunk_tokens=chunk_tokens)
    return source, seen


def test_lbfgs_over_chunks_minimises_the_whole_sample():
    """Loss and gradient summed over chunks: the same optimum as the stacked sample,
    with never more than one chunk read."""
    from replaceme_linear.cosine_solve import fit_stream

    gen, x, t_true = planted(4)
    y = x @ t_true + 0.5 * torch.randn(N, H, generator=gen)
    closed = torch.linalg.lstsq(x.double(), y.double()).solution.float()
    source, seen = _counting_source(x, y, parts=8, chunk_tokens=128)
    assert len(source) == 4
    fit = fit_stream(source, loss="mse", solver="lbfgs", lbfgs_steps=200)
    torch.testing.assert_close(fit.transform, closed, rtol=1e-3, atol=1e-3)
    whole = fit_transform(x, y, loss="cosine", solver="lbfgs", lbfgs_steps=30)
    chunked = fit_stream(_counting_source(x, y, parts=8, chunk_tokens=128)[0], loss="cosine", solver="lbfgs",
                         lbfgs_steps=30)
    torch.testing.assert_close(chunked.history[0], whole.history[0], rtol=1e-5, atol=0)  # same objective at T = I
    torch.testing.assert_close(chunked.transform, whole.transform, rtol=1e-3, atol=1e-3)
    assert seen["max_rows"] == N // 8 and source.peak_bytes == 128 * H * 4 * 2


def test_adam_over_chunks_visits_every_token_each_epoch():
    from replaceme_linear.cosine_solve import adam_steps, fit_stream

    _, x, t_true = planted(5)
    source, _ = _counting_source(x, x @ t_true, parts=4, chunk_tokens=256)
    fit = fit_stream(source, loss="mse", solver="adam", epochs=300, lr=0.02, batch_tokens=100, seed=0)
    assert fit.steps == adam_steps(source, 100, 300) == 300 * 2 * 3  # 2 chunks of 256 tokens, 3 steps each
    torch.testing.assert_close(fit.transform, t_true, rtol=2e-2, atol=2e-2)
    # one chunk: the reference's shuffle of every token, as fit_transform on stacked tensors
    one = fit_stream(_counting_source(x, x @ t_true, parts=4, chunk_tokens=N)[0], solver="adam", epochs=2, seed=1)
    assert torch.equal(one.transform, fit_transform(x, x @ t_true, solver="adam", epochs=2, seed=1).transform)
