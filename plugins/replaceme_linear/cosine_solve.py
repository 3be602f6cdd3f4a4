"""Cosine-distance estimation of the ReplaceMe linear map (pure tensor math).

ReplaceMe (arXiv 2505.02819, eq. 7): minimise ``1 − cos(X T, Y)`` averaged over
tokens, or with ``accurate`` ``1 − cos(X T + Z, x_e)`` where ``Z = x_s − m_{s-1}``
(the part of the block input that bypasses the MLP), starting from T = I. The
reference uses Adam, lr 1e-4, batches of 1024 tokens, 10 epochs; L-BFGS on the
whole token sample is offered as a faster-converging alternative. An ``mse`` loss
is available for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class FitResult:
    """T (``[h, h]`` float32) and the loss history (one value per epoch or L-BFGS step)."""

    transform: torch.Tensor
    history: list[float] = field(default_factory=list)
    steps: int = 0


def _loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "cosine":
        return (1.0 - torch.nn.functional.cosine_similarity(pred, target, dim=-1, eps=1e-8)).mean()
    return ((pred - target) ** 2).sum(-1).mean() / target.pow(2).sum(-1).mean().clamp_min(1e-12)


def fit_transform(
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    offset: torch.Tensor | None = None,
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
    """Fit T so that ``x T (+ offset)`` matches ``target`` token by token.

    Args:
        x: ``[N, h]`` inputs (m_{s-1}), float32, on the compute device.
        target: ``[N, h]`` (Y, or x_e with ``offset``).
        offset: optional ``[N, h]`` added to ``x T`` before the loss (Z).
        init: initial T (default identity).
        loss: ``cosine`` or ``mse`` (relative squared error).
        solver: ``adam`` (mini-batches of ``batch_tokens``, ``epochs`` passes)
            or ``lbfgs`` (full batch, ``lbfgs_steps`` iterations, strong Wolfe).
        on_step: callback ``(advance, loss)`` for progress display.
    """
    h = x.shape[1]
    t = (init.clone(memory_format=torch.contiguous_format) if init is not None else torch.eye(h)).to(x.device, torch.float32).requires_grad_(True)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    history: list[float] = []

    def batch_loss(idx: torch.Tensor | None) -> torch.Tensor:
        xb = x if idx is None else x[idx]
        tb = target if idx is None else target[idx]
        pred = xb @ t
        if offset is not None:
            pred = pred + (offset if idx is None else offset[idx])
        return _loss(pred, tb, loss)

    steps = 0
    if solver == "adam":
        opt = torch.optim.Adam([t], lr=lr)
        n = x.shape[0]
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(x.device)
            total, count = 0.0, 0
            for start in range(0, n, batch_tokens):
                idx = perm[start : start + batch_tokens]
                opt.zero_grad(set_to_none=True)
                value = batch_loss(idx)
                value.backward()
                opt.step()
                steps += 1
                total += value.item() * len(idx)
                count += len(idx)
                if on_step:
                    on_step(1, value.item())
            history.append(total / max(count, 1))
    elif solver == "lbfgs":
        opt = torch.optim.LBFGS([t], lr=1.0, max_iter=lbfgs_steps, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure():
            nonlocal steps
            opt.zero_grad(set_to_none=True)
            value = batch_loss(None)
            value.backward()
            steps += 1
            history.append(value.item())
            if on_step:
                on_step(1, value.item())
            return value

        opt.step(closure)
    else:
        raise ValueError(f"unknown solver {solver!r}")
    return FitResult(t.detach(), history, steps)
