"""Training math of LLM-Streamline's replacement layer (Chen et al., ICLR 2025,
arXiv 2403.19135, §3.2): fit one module ``f`` so that ``f(x_s) ≈ x_{s+k}``
under the mean squared error, with AdamW, a cosine learning-rate schedule and
gradient clipping, keeping the weights with the best validation MSE.

Everything here takes tensors and modules and returns them; nothing knows about
models, adapters or the statistics pass, so it is tested on its own.

Notation: ``B`` sequences, ``T`` tokens, ``h`` hidden size. A :class:`Pair` is
one calibration batch: input ``x [B, T, h]``, target ``y [B, T, h]``, mask
``[B, T]`` (False at pad positions, which never enter a loss or a metric) and
the keyword arguments the module is called with (attention mask, position
embeddings, ...). The MSE is the mean over non-pad tokens *and* hidden units,
as ``torch.nn.MSELoss`` in the reference (which, unlike us, also counts pads).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class Pair:
    """One training or validation batch.

    Attributes:
        x: module input ``[B, T, h]``.
        y: target ``[B, T, h]``.
        mask: ``[B, T]`` bool, False at pad positions.
        kwargs: keyword arguments of the module call (tensors may sit on any device).
    """

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser settings; defaults are the reference's (arXiv 2403.19135, §4.1).

    Attributes:
        epochs: passes over the training pairs (one optimiser step per pair).
        lr, min_lr: the cosine schedule decays from ``lr`` to ``min_lr``.
        warmup: fraction of the steps with a linear warm-up (reference: 1%).
        weight_decay: AdamW's decoupled weight decay.
        grad_clip: maximum global gradient norm (0 = no clipping).
        micro_batch: sequences per forward/backward inside a pair, gradients
            accumulated (0 = the whole pair at once); the result is the same.
        eval_every: validate every this many steps too (0 = after each epoch only).
        seed: seeds the pair order and any dropout.
    """

    epochs: int = 1
    lr: float = 2e-4
    min_lr: float = 5e-5
    warmup: float = 0.01
    weight_decay: float = 1e-3
    grad_clip: float = 5.0
    micro_batch: int = 0
    eval_every: int = 0
    seed: int = 0


@dataclass
class TrainReport:
    """What happened during training.

    Attributes:
        train_losses: training MSE of each optimiser step (before the update).
        validation: ``(step, MSE)`` at initialisation (step 0) and at each validation.
        best_step: step whose weights were kept (0 = the initial weights).
        steps: optimiser steps taken.
        seconds: wall time.
    """

    train_losses: list[float] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)
    best_step: int = 0
    steps: int = 0
    seconds: float = 0.0

    @property
    def val_init(self) -> float:
        return self.validation[0][1]

    @property
    def val_best(self) -> float:
        return min(v for _, v in self.validation)

    @property
    def improved(self) -> bool:
        return self.best_step > 0

    def _window(self) -> int:
        return max(1, math.ceil(len(self.train_losses) / 10))

    @property
    def train_loss_first(self) -> float:
        """Mean training loss of the first tenth of the steps (at least one): single
        steps see different batches, so one step alone is too noisy to compare."""
        return sum(self.train_losses[: self._window()]) / self._window()

    @property
    def train_loss_last(self) -> float:
        """Mean training loss of the last tenth of the steps (at least one)."""
        return sum(self.train_losses[-self._window() :]) / self._window()


def lr_at(step: int, total: int, s: TrainSettings) -> float:
    """Learning rate of step ``step`` (0-based) of ``total``: linear warm-up, then
    cosine decay from ``s.lr`` to ``s.min_lr`` (reached at the last step)."""
    warm = int(s.warmup * total)
    if step < warm:
        return s.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm - 1)
    return s.min_lr + (s.lr - s.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def to_device(value: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """Move tensors inside ``value`` (tensor, tuple, list, dict) to ``device``;
    floating-point ones also to ``dtype`` when given. Other values are returned as is."""
    if isinstance(value, torch.Tensor):
        if dtype is not None and value.is_floating_point():
            return value.to(device=device, dtype=dtype)
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device, dtype) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device, dtype) for k, v in value.items()}
    return value


def _slice_batch(value: Any, rows: slice, batch: int) -> Any:
    """Rows ``rows`` of every tensor in ``value`` whose first dimension is the batch
    (``batch``); tensors broadcast over the batch (first dimension 1) are kept."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.dim() and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(_slice_batch(v, rows, batch) for v in value)
    if isinstance(value, dict):
        return {k: _slice_batch(v, rows, batch) for k, v in value.items()}
    return value


def micro_batches(pair: Pair, size: int) -> list[Pair]:
    """Split ``pair`` into pairs of at most ``size`` sequences (``size`` <= 0: no split)."""
    batch = pair.x.shape[0]
    if size <= 0 or size >= batch:
        return [pair]
    out = []
    for start in range(0, batch, size):
        rows = slice(start, start + size)
        out.append(Pair(pair.x[rows], pair.y[rows], pair.mask[rows], _slice_batch(pair.kwargs, rows, batch)))
    return out


def forward(module: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """``module(x, **kwargs)``, unwrapping a tuple output (older HF layers): ``[B, T, h]``."""
    out = module(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def squared_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors over the non-pad tokens: ``[B, T, h]`` × 2, ``[B, T]`` -> scalar."""
    return (pred - target).pow(2).sum(-1)[mask].sum()


def _on(pair: Pair, device: torch.device, dtype: torch.dtype) -> Pair:
    return Pair(
        pair.x.to(device=device, dtype=dtype),
        pair.y.to(device=device, dtype=dtype),
        pair.mask.to(device),
        to_device(pair.kwargs, device, dtype),
    )


@torch.no_grad()
def evaluate_mse(module: nn.Module, pairs: list[Pair], device: torch.device) -> float:
    """MSE of ``module(x)`` against ``y`` over all non-pad tokens and hidden units;
    the module runs in its own dtype, errors are summed in float64."""
    dtype = next(module.parameters()).dtype
    was_training = module.training
    module.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for pair in pairs:
        p = _on(pair, device, dtype)
        pred = forward(module, p.x, p.kwargs)
        total += squared_error(pred.double(), p.y.double(), p.mask).cpu()
        count += pair.tokens * pair.x.shape[-1]
    module.train(was_training)
    return float(total) / max(count, 1)


def identity_mse(pairs: list[Pair]) -> float:
    """MSE of plain removal (``x`` against ``y``) in float64: the number a trained layer must beat."""
    total, count = 0.0, 0
    for pair in pairs:
        total += float(squared_error(pair.x.double(), pair.y.double(), pair.mask))
        count += pair.tokens * pair.x.shape[-1]
    return total / max(count, 1)


def _step(module: nn.Module, pair: Pair, s: TrainSettings, device: torch.device) -> float:
    """Forward/backward of one pair (in micro-batches); returns its MSE.

    Each micro-batch's loss is its squared error over the pair's element count,
    so the accumulated gradient is that of the whole pair's MSE.
    """
    dtype = next(module.parameters()).dtype
    count = pair.tokens * pair.x.shape[-1]
    total = 0.0
    for part in micro_batches(pair, s.micro_batch):
        p = _on(part, device, dtype)
        loss = squared_error(forward(module, p.x, p.kwargs), p.y, p.mask) / max(count, 1)
        loss.backward()
        total += float(loss.detach())
    return total


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (dropout) inside, restoring it afterwards."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train_replacement(
    module: nn.Module,
    train: list[Pair],
    validation: list[Pair],
    settings: TrainSettings,
    device: torch.device | str = "cpu",
    on_step: Callable[[float], None] | None = None,
) -> tuple[nn.Module, TrainReport]:
    """Train ``module`` so that ``module(x, **kwargs) ≈ y`` (MSE over non-pad tokens).

    The module is trained in float32 on ``device`` (its parameters are converted
    in place), only parameters with ``requires_grad`` are optimised, and the
    weights with the lowest validation MSE are kept, the initial ones included:
    if validation never improves on initialisation the initial weights come back
    with a warning (the reference crashes there).

    Args:
        module: the replacement, called like the first layer of the window.
        train, validation: pairs (any device, any float dtype).
        settings: optimiser settings.
        device: where to train.
        on_step: called with each step's training loss (for a progress bar).

    Returns:
        The trained module (float32, on ``device``, eval mode) and a :class:`TrainReport`.
    """
    if not train or not validation:
        raise ValueError("training needs at least one training and one validation batch")
    device = torch.device(device)
    start = time.perf_counter()
    module.to(device=device, dtype=torch.float32)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    report = TrainReport(validation=[(0, evaluate_mse(module, validation, device))])
    best = (report.val_init, _snapshot(module))
    total = settings.epochs * len(train)
    generator = torch.Generator().manual_seed(settings.seed)

    def validate() -> None:
        nonlocal best
        mse = evaluate_mse(module, validation, device)
        report.validation.append((report.steps, mse))
        if mse < best[0]:
            best = (mse, _snapshot(module))
            report.best_step = report.steps

    with _seeded(settings.seed, device):
        module.train()
        for _ in range(settings.epochs):
            for index in torch.randperm(len(train), generator=generator).tolist():
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(report.steps, total, settings)
                optimizer.zero_grad(set_to_none=True)
                loss = _step(module, train[index], settings, device)
                if settings.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
                optimizer.step()
                report.steps += 1
                report.train_losses.append(loss)
                if on_step is not None:
                    on_step(loss)
                if settings.eval_every and report.steps % settings.eval_every == 0:
                    validate()
            if report.validation[-1][0] != report.steps:
                validate()
    module.load_state_dict(best[1])
    module.eval()
    if not report.improved:
        log.warning(
            "validation MSE never improved on the initial %.4g (best later %.4g); keeping the initial weights",
            report.val_init,
            min(v for _, v in report.validation[1:]),
        )
    report.seconds = time.perf_counter() - start
    return module, report
