"""The healing optimiser loop: AdamW, linear warm-up then cosine decay, gradient
accumulation, held-out loss, early stop, resumable checkpoints, data parallelism.

One optimiser step takes ``batch_size`` packed sequences (a seeded order over the
training sequences, epoch after epoch), split over the processes of a ``torchrun``
job and, within a process, into micro-batches whose gradients accumulate. Each
micro-batch's loss is its *sum* over positions divided by the position count of the
whole global batch (times the number of processes, which DDP's gradient mean
divides away), so the update is the same whatever the split: one process with the
same global batch gives the same weights up to float rounding.

Dropout (LoRA's) is seeded per step (``seed + step``), the order and the learning
rate are functions of the step, and the optimiser state is checkpointed, so a
resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from replaceme import distributed
from replaceme.distributed import ddp
from replaceme.errors import ReplacemeError
from replaceme.healer import HealOptions, check_batch_processes
from replaceme.healing.data import HealBatches
from replaceme.healing.objective import count, loss_sum
from replaceme.healing.state import CheckpointStore

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Progress of a healing run (checkpointed with the weights).

    Attributes:
        step: optimiser steps done.
        train_curve: ``[step, mean training loss of that step]``.
        heldout_curve: ``[step, held-out loss]``, at step 0 and every ``eval_every`` steps and at the end.
        best, best_step: lowest held-out loss and the step it was measured after.
        tokens_seen: training positions consumed (all processes).
        stopped_early: the held-out loss stopped improving (``patience``).
        resumed_from: the step a checkpoint resumed from (None: a fresh run).
    """

    step: int = 0
    train_curve: list[list[float]] = field(default_factory=list)
    heldout_curve: list[list[float]] = field(default_factory=list)
    best: float = math.inf
    best_step: int = 0
    tokens_seen: int = 0
    stopped_early: bool = False
    resumed_from: int | None = None
    stale_evals: int = 0


def lr_factor(step: int, opts: HealOptions) -> float:
    """Multiplier of ``lr`` at (0-based) ``step``: linear warm-up, then cosine to ``min_lr_ratio``."""
    warmup = min(opts.warmup, opts.steps - 1)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, opts.steps - 1 - warmup)
    return opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def sequence_order(n: int, total: int, seed: int) -> list[int]:
    """``total`` training-sequence indices: seeded permutations of ``0..n-1``, one per epoch."""
    gen = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while len(out) < total:
        out.extend(torch.randperm(n, generator=gen).tolist())
    return out[:total]


class Loop:
    """Trains the parameters of ``module`` that require gradients.

    Args:
        module: the student, called like a causal LM (``input_ids``, ``attention_mask``).
        teacher: the unpruned model (used by the ``kd`` objective), or None for ``ce``.
        data: packed training and held-out sequences.
        opts: the healer's options.
        seed: seeds the order and dropout.
        store: where checkpoints go (None: no checkpoints, no resume).
        on_step: called as ``on_step(state)`` after every optimiser step.
    """

    def __init__(self, module: Any, teacher: Any, data: HealBatches, opts: HealOptions, *, seed: int = 0,
                 store: CheckpointStore | None = None, on_step: Callable[[LoopState], None] | None = None):
        self.module, self.teacher, self.data, self.opts = module, teacher, data, opts
        self.seed, self.store, self.on_step = seed, store, on_step
        self.named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not self.named:
            raise ReplacemeError("healing: nothing to train (the healer marked no parameter)")
        self.device = self.named[0][1].device
        self.optimizer = torch.optim.AdamW([p for _, p in self.named], lr=opts.lr, weight_decay=opts.weight_decay)
        self.state = LoopState()
        self.best_weights: dict[str, torch.Tensor] | None = None
        cuda = self.device.type == "cuda"
        self.bf16 = opts.bf16 == "on" or (opts.bf16 == "auto" and cuda and torch.cuda.is_bf16_supported())

    # ------------------------------------------------------------------ pieces

    def _autocast(self) -> Any:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _loss(self, model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids, mask = ids.to(self.device), mask.to(self.device)
        teacher_logits = None
        with self._autocast():
            if self.opts.objective == "kd":
                with torch.no_grad():
                    teacher_logits = self.teacher(input_ids=ids, attention_mask=mask).logits
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return loss_sum(self.opts.objective, logits, ids, mask, teacher_logits, self.opts.temperature,
                        self.opts.ce_weight)

    @torch.no_grad()
    def heldout_loss(self) -> float:
        """Mean objective over the held-out sequences (every process computes it alike)."""
        self.module.eval()
        total, n = 0.0, 0
        step = self.opts.micro_batch or self.opts.batch_size
        for i in range(0, self.data.heldout.shape[0], step):
            ids, mask = self.data.heldout[i:i + step], self.data.heldout_mask[i:i + step]
            total += float(self._loss(self.module, ids, mask))
            n += count(mask)
        self.module.train()
        return total / max(n, 1)

    def _payload(self) -> dict[str, Any]:
        return {"params": {n: p.detach().to("cpu", copy=True) for n, p in self.named},
                "optimizer": self.optimizer.state_dict(), "state": asdict(self.state),
                "best_weights": self.best_weights}

    def _restore(self, payload: dict[str, Any]) -> None:
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(payload["params"][n])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.state = LoopState(**payload["state"])
        self.best_weights = payload["best_weights"]
        self.state.resumed_from = self.state.step
        log.info("healing resumes from its checkpoint at step %d", self.state.step)

    def _evaluate(self) -> bool:
        """Record the held-out loss; True when the run should stop early."""
        value = self.heldout_loss()
        self.state.heldout_curve.append([self.state.step, value])
        if value < self.state.best:
            self.state.best, self.state.best_step, self.state.stale_evals = value, self.state.step, 0
            if self.opts.patience:
                self.best_weights = {n: p.detach().to("cpu", copy=True) for n, p in self.named}
            return False
        self.state.stale_evals += 1
        return bool(self.opts.patience) and self.state.stale_evals >= self.opts.patience

    def _step(self, model: Any, rows: list[int]) -> None:
        opts, size = self.opts, ddp.size()
        ids, mask = self.data.train[rows], self.data.train_mask[rows]
        n_global = count(mask)
        mine = ddp.shard_rows(list(range(len(rows))))
        micro = opts.micro_batch or len(mine)
        chunks = [mine[i:i + micro] for i in range(0, len(mine), micro)]
        for group in self.optimizer.param_groups:
            group["lr"] = opts.lr * lr_factor(self.state.step, opts)
        torch.manual_seed(self.seed + self.state.step)  # dropout, reproducible on resume
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for j, chunk in enumerate(chunks):
            sync = j == len(chunks) - 1 or model is self.module  # DDP all-reduces on the last one only
            with contextlib.nullcontext() if sync else model.no_sync():
                loss = self._loss(model, ids[chunk], mask[chunk])
                (loss * (size / max(n_global, 1))).backward()
            total += float(loss.detach())
        total = ddp.sum_over_ranks(total)
        if not math.isfinite(total):
            raise ReplacemeError(f"healing: the loss became {total} at step {self.state.step + 1} "
                                 "(lower -o heal.lr, or use -o heal.bf16 off)")
        if opts.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in self.named], opts.grad_clip)
        self.optimizer.step()
        self.state.step += 1
        self.state.tokens_seen += n_global
        self.state.train_curve.append([self.state.step, total / max(n_global, 1)])

    # ------------------------------------------------------------------ the loop

    def run(self) -> LoopState:
        """Train for ``opts.steps`` steps (or until early stop), resuming from a checkpoint."""
        from replaceme.console import LossBar

        opts = self.opts
        check_batch_processes(opts.batch_size, ddp.size())
        if self.store is not None:
            payload = distributed.broadcast(distributed.on_root(self.store.load))
            if payload is not None:
                self._restore(payload)
        model = ddp.wrap(self.module)  # broadcasts rank 0's parameters
        self.module.train()
        if not self.state.heldout_curve:
            self._evaluate()
        order = sequence_order(self.data.train.shape[0], opts.steps * opts.batch_size, self.seed)
        show = ddp.shows_progress()
        with LossBar("healing", opts.steps) if show else contextlib.nullcontext() as bar:
            if bar is not None:
                bar.update(advance=self.state.step)
            while self.state.step < opts.steps and not self.state.stopped_early:
                start = self.state.step * opts.batch_size
                self._step(model, order[start:start + opts.batch_size])
                step = self.state.step
                if opts.eval_every and step % opts.eval_every == 0 and step < opts.steps:
                    self.state.stopped_early = self._evaluate()
                if bar is not None:
                    bar.update(loss=self.state.train_curve[-1][1], heldout=self.state.heldout_curve[-1][1])
                if self.store is not None and opts.checkpoint_every and step % opts.checkpoint_every == 0:
                    payload = self._payload()
                    distributed.on_root(lambda: self.store.save(payload))
                if self.on_step is not None:
                    self.on_step(self.state)
        if self.state.heldout_curve[-1][0] != self.state.step:
            self._evaluate()
        if self.opts.patience and self.best_weights is not None and self.state.best_step != self.state.step:
            with torch.no_grad():
                for n, p in self.named:
                    p.copy_(self.best_weights[n])
        self.module.eval()
        return self.state
