"""Least-squares estimation of the ReplaceMe linear map (pure tensor math).

ReplaceMe (Shopkhoev et al., arXiv 2505.02819, eq. 4–5): with ``X = m_{s-1}``
(``[N, h]``, MLP output of the layer before the block) and
``Y = x_e − x_s + m_{s-1}`` (``[N, h]``),

    T* = argmin_T ‖X T − Y‖²_F + α ‖T‖²_F = (XᵀX + α I)⁻¹ XᵀY,

computed from the accumulated normal equations ``A = XᵀX``, ``B = XᵀY`` in
float64 by a Cholesky factorisation and two triangular solves — never an
explicit inverse. When ``A`` is ill-conditioned a ridge ``α`` is added so that
``cond(A + α I)`` is at most ``max_condition``; the caller warns and records it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: at most this many tenfold ridge increases before giving up (from 1e-12 relative, far past any real matrix)
MAX_RIDGE_STEPS = 40


@dataclass
class Solution:
    """A solved map and how it was obtained.

    Attributes:
        transform: T, ``[h, h]`` float64.
        condition: condition number of ``XᵀX`` (before any ridge).
        ridge: the α actually used (user's plus automatic).
        auto_ridge: whether α was raised automatically.
    """

    transform: torch.Tensor
    condition: float
    ridge: float
    auto_ridge: bool


def condition_number(gram: torch.Tensor) -> float:
    """``λ_max / λ_min`` of a symmetric PSD matrix (inf when singular)."""
    eig = torch.linalg.eigvalsh(gram.to(torch.float64))
    lo, hi = float(eig[0]), float(eig[-1])
    return float("inf") if lo <= 0 else hi / lo


def ridge_for_condition(gram: torch.Tensor, max_condition: float) -> float:
    """Smallest α with ``(λ_max + α) / (λ_min + α) <= max_condition``."""
    eig = torch.linalg.eigvalsh(gram.to(torch.float64))
    lo, hi = max(float(eig[0]), 0.0), float(eig[-1])
    return max(0.0, (hi - max_condition * lo) / (max_condition - 1.0))


def solve_lstsq(
    xtx: torch.Tensor,
    xty: torch.Tensor,
    alpha: float = 0.0,
    max_condition: float = 1e10,
    diag: bool = False,
) -> Solution:
    """Solve ``(XᵀX + α I) T = XᵀY`` for T.

    Args:
        xtx: ``XᵀX``, ``[h, h]``.
        xty: ``XᵀY``, ``[h, h]``.
        alpha: ridge the user asked for (>= 0).
        max_condition: raise α automatically above this condition number.
        diag: restrict T to a diagonal matrix: ``t_j = B_jj / (A_jj + α)``,
            the per-coordinate least-squares scale.

    Returns:
        A :class:`Solution` (T in float64).
    """
    a = xtx.to(torch.float64)
    b = xty.to(torch.float64)
    h = a.shape[0]
    if not math.isfinite(float(alpha)) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        raise ValueError("XᵀX or XᵀY holds NaN or Inf (non-finite activations in the calibration pass)")
    cond = condition_number(a)
    ridge, auto = float(alpha), False
    if cond > max_condition:
        needed = ridge_for_condition(a, max_condition)
        if needed > ridge:
            ridge, auto = needed, True
    if diag:
        t = torch.diag(torch.diagonal(b) / (torch.diagonal(a) + ridge).clamp_min(torch.finfo(torch.float64).tiny))
        return Solution(t, cond, ridge, auto)
    eye = torch.eye(h, dtype=torch.float64, device=a.device)
    system = a + ridge * eye
    chol, info = torch.linalg.cholesky_ex(system)
    for _ in range(MAX_RIDGE_STEPS):  # not positive definite in floating point: grow the ridge
        if int(info) == 0:
            break
        ridge = max(ridge * 10.0, float(torch.diagonal(a).abs().mean()) * 1e-12 + 1e-12)
        auto = True
        chol, info = torch.linalg.cholesky_ex(a + ridge * eye)
    if int(info) != 0:
        raise ValueError(f"XᵀX + αI is not positive definite even with α = {ridge:.3g}")
    t = torch.cholesky_solve(b, chol)
    return Solution(t, cond, ridge, auto)


def residual_from_gram(xtx: torch.Tensor, xty: torch.Tensor, yty: float, t: torch.Tensor) -> float:
    """``‖XT − Y‖² = tr(TᵀXᵀX T) − 2 tr(TᵀXᵀY) + tr(YᵀY)``, without the tokens."""
    a, b, t = xtx.to(torch.float64), xty.to(torch.float64), t.to(torch.float64)
    return float(torch.sum(t * (a @ t)) - 2.0 * torch.sum(t * b) + yty)
