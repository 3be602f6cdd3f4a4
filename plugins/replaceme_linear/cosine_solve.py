"""Cosine-distance estimation of the ReplaceMe linear map (pure tensor math).

ReplaceMe (arXiv 2505.02819, eq. 7): minimise ``1 − cos(X T, Y)`` averaged over
tokens, or with ``accurate`` ``1 − cos(X T + Z, x_e)`` where ``Z = x_s − m_{s-1}``
(the part of the block input that bypasses the MLP), starting from T = I. The
reference uses Adam, lr 1e-4, batches of 1024 tokens, 10 epochs; L-BFGS on the
whole token sample is offered as a faster-converging alternative. An ``mse`` loss
is available for comparison. Both read the sample chunk by chunk
(:class:`~replaceme_linear.token_stream.ChunkedTokens`), so the compute device
holds one chunk whatever the token budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from replaceme_linear.token_stream import ChunkedTokens


@dataclass
class FitResult:
    """T (``[h, h]`` float32) and the loss history (one value per epoch or L-BFGS step)."""

    transform: torch.Tensor
    history: list[float] = field(default_factory=list)
    steps: int = 0


def _token_losses(pred: torch.Tensor, target: torch.Tensor, kind: str, scale: float) -> torch.Tensor:
    """Per-token loss: ``1 − cos`` (cosine) or ``‖pred − target‖² / scale`` (mse, where
    ``scale`` is the mean ``‖target‖²`` over the whole sample)."""
    if kind == "cosine":
        return 1.0 - torch.nn.functional.cosine_similarity(pred, target, dim=-1, eps=1e-8)
    return ((pred - target) ** 2).sum(-1) / scale


def _mse_scale(source: ChunkedTokens, kind: str) -> float:
    """Mean squared norm of the targets over every chunk (mse only: one pass, float64)."""
    if kind != "mse":
        return 1.0
    total = sum(float(target.to(torch.float64).pow(2).sum()) for _, target, _ in source)
    return max(total / max(source.tokens, 1), 1e-12)


def fit_transform(x: torch.Tensor, target: torch.Tensor, *, offset: torch.Tensor | None = None,
                  chunk_tokens: int | None = None, **options) -> FitResult:
    """Fit T so that ``x T (+ offset)`` matches ``target`` token by token, on tensors in memory.

    Args:
        x: ``[N, h]`` inputs (m_{s-1}), float32, on the compute device.
        target: ``[N, h]`` (Y, or x_e with ``offset``).
        offset: optional ``[N, h]`` added to ``x T`` before the loss (Z).
        chunk_tokens: visit the tokens in chunks of this many (default: all at once).
        options: as :func:`fit_stream`.
    """
    return fit_stream(ChunkedTokens.of_tensors(x, target, offset, chunk_tokens=chunk_tokens), **options)


def fit_stream(
    source: ChunkedTokens,
    *,
    init: torch.Tensor | None = None,
    loss: str = "cosine",
    solver: str = "adam",
    epochs: int = 10,
    lr: float = 1e-4,
    batch_tokens: int = 1024,
    lbfgs_steps: int = 100,
    seed: int = 0,
    on_step=None,
) -> FitResult:
    """Fit T on a token sample read chunk by chunk (:class:`ChunkedTokens`): the
    compute device holds T, the optimiser state and one chunk.

    Args:
        source: the ``(x, target, offset)`` rows.
        init: initial T (default identity).
        loss: ``cosine`` or ``mse`` (relative squared error).
        solver: ``adam``: mini-batches of ``batch_tokens``, ``epochs`` passes. Each
            epoch shuffles the tokens (seeded); with several chunks it visits the chunks
            in a shuffled order and shuffles the tokens within each chunk (mini-batches
            do not straddle chunks), with one chunk this is the reference's shuffle of
            every token. ``lbfgs``: full batch, ``lbfgs_steps`` iterations, strong Wolfe;
            each loss and gradient is accumulated part by part (one calibration batch
            each) in the sample's order, so the fit is the same whatever the chunking.
        on_step: callback ``(advance, loss)`` for progress display.
    """
    first = source.chunk(0)[0]
    h, device, n = first.shape[1], first.device, source.tokens
    del first
    t = (init.clone(memory_format=torch.contiguous_format) if init is not None else torch.eye(h))
    t = t.to(device, torch.float32).requires_grad_(True)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    scale = _mse_scale(source, loss)
    history: list[float] = []

    def losses(chunk: tuple, idx: torch.Tensor | None) -> torch.Tensor:
        x, target, offset = chunk if idx is None else (None if c is None else c[idx] for c in chunk)
        pred = x @ t
        if offset is not None:
            pred = pred + offset
        return _token_losses(pred, target, loss, scale)

    steps = 0
    if solver == "adam":
        opt = torch.optim.Adam([t], lr=lr)
        for _ in range(epochs):
            if len(source) == 1:
                visits = [(0, torch.randperm(n, generator=gen))]
            else:
                visits = [(int(k), torch.randperm(source.chunk_size(int(k)), generator=gen))
                          for k in torch.randperm(len(source), generator=gen)]
            total, count = 0.0, 0
            for k, perm in visits:
                chunk, perm = source.chunk(k), perm.to(device)
                for lo in range(0, len(perm), batch_tokens):
                    idx = perm[lo : lo + batch_tokens]
                    opt.zero_grad(set_to_none=True)
                    value = losses(chunk, idx).mean()
                    value.backward()
                    opt.step()
                    steps += 1
                    total += value.item() * len(idx)
                    count += len(idx)
                    if on_step:
                        on_step(1, value.item())
                del chunk
            history.append(total / max(count, 1))
    elif solver == "lbfgs":
        opt = torch.optim.LBFGS([t], lr=1.0, max_iter=lbfgs_steps, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure():
            nonlocal steps
            opt.zero_grad(set_to_none=True)
            # the mean over every token: per-part sums / N, gradients accumulated part by part
            # in the sample's order, so the objective and its gradient (hence the fit) are the
            # same whatever the chunk size (in RAM or spilled, --offload or not)
            value = torch.zeros((), device=device)
            for rows in source.by_part():
                part = losses(rows, None).sum() / n
                part.backward()
                value += part.detach()
            steps += 1
            history.append(value.item())
            if on_step:
                on_step(1, value.item())
            return value

        opt.step(closure)
    else:
        raise ValueError(f"unknown solver {solver!r}")
    return FitResult(t.detach(), history, steps)


def adam_steps(source: ChunkedTokens, batch_tokens: int, epochs: int) -> int:
    """Optimiser steps :func:`fit_stream` takes with Adam (mini-batches do not straddle chunks)."""
    return epochs * sum(-(-source.chunk_size(k) // batch_tokens) for k in range(len(source)))
