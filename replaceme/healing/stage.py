"""The healing stage: student = the pruned variant, teacher = the unpruned model in memory.

:func:`heal` freezes the student, lets the :class:`~replaceme.healer.Healer` mark
what trains, gives every trainable tensor that shares storage with the teacher its
own copy (so the unpruned weights, which ``compare`` shares between methods and
distillation reads, are never written), estimates memory and refuses what cannot
fit, runs the loop (:mod:`replaceme.healing.loop`) with checkpoints in replaceme's
cache, and asks the healer for a standard model back. Nothing half-healed is ever
returned: an interrupted run raises and leaves only its checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from replaceme import distributed
from replaceme.distributed import ddp
from replaceme.errors import ReplacemeError
from replaceme.healer import HealContext, Healer
from replaceme.healing.data import HealBatches
from replaceme.healing.loop import Loop, LoopState
from replaceme.healing.memory import check_fits, estimate
from replaceme.healing.state import CheckpointStore
from replaceme.options import options_to_dict
from replaceme.resources import Meter, Usage

log = logging.getLogger(__name__)


@dataclass
class HealRecord:
    """What healing did, for ``pruning.json``, the model card and comparison rows."""

    healer: str
    options: dict[str, Any]
    data: dict[str, Any]
    state: LoopState
    usage: Usage
    memory: dict[str, Any] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.usage.seconds

    def to_dict(self) -> dict[str, Any]:
        s = self.state
        curve = s.heldout_curve
        return {
            "healer": self.healer, "options": self.options, "data": self.data,
            "steps": s.step, "tokens_seen": s.tokens_seen,
            "loss": {"train_start": s.train_curve[0][1] if s.train_curve else None,
                     "train_end": s.train_curve[-1][1] if s.train_curve else None,
                     "heldout_start": curve[0][1], "heldout_end": curve[-1][1],
                     "heldout_best": s.best, "best_step": s.best_step},
            "heldout_curve": curve, "train_curve": _thin(s.train_curve),
            "stopped_early": s.stopped_early, "resumed_from": s.resumed_from,
            "trained_tensors": self.trained if len(self.trained) <= 64 else [*self.trained[:64], "..."],
            "memory": self.memory, "usage": self.usage.to_dict(),
        }


def _thin(curve: list[list[float]], points: int = 100) -> list[list[float]]:
    """At most ``points`` evenly spaced entries (the last one always kept)."""
    if len(curve) <= points:
        return curve
    stride = len(curve) / points
    return [curve[int(i * stride)] for i in range(points)] + [curve[-1]]


def _privatise(module: Any, teacher: Any) -> int:
    """Give each trainable parameter sharing storage with ``teacher`` its own copy; bytes copied."""
    teacher_ptrs = {t.untyped_storage().data_ptr() for t in teacher.parameters()}
    copied = 0
    for p in module.parameters():  # unique parameters: a tied weight is copied once and stays tied
        if p.requires_grad and p.untyped_storage().data_ptr() in teacher_ptrs:
            p.data = p.data.clone()
            copied += p.numel() * p.element_size()
    return copied


def _shared_bytes(module: Any, teacher: Any) -> int:
    ptrs = {t.untyped_storage().data_ptr() for t in teacher.parameters()}
    return sum(p.numel() * p.element_size() for p in module.parameters()
               if p.requires_grad and p.untyped_storage().data_ptr() in ptrs)


def _fingerprint(module: Any) -> str:
    from replaceme.stats.cache import model_fingerprint

    return model_fingerprint(module)


def _checkpointing(module: Any, healer: Healer) -> bool:
    mode = healer.options.gradient_checkpointing
    on = mode == "on" or (mode == "auto" and next(module.parameters()).device.type == "cuda")
    if on and hasattr(module, "gradient_checkpointing_enable"):
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return True
    return False


def heal(student: Any, teacher: Any, healer: Healer, ctx: HealContext, data: HealBatches, *, seed: int = 0,
         identity: dict[str, Any] | None = None, resume: bool = True,
         on_step: Any = None) -> tuple[Any, HealRecord]:
    """Train ``student`` (the pruned model; a variant sharing untouched tensors with
    ``teacher``) with ``healer`` and return ``(healed standard model, record)``.

    Args:
        ctx: the plan, compensations and merger (what the healer may read).
        data: packed healing sequences.
        identity: JSON-able description of the run's inputs (method, plan, source...);
            with ``resume`` it names the checkpoint directory in replaceme's cache.
        on_step: passed to the loop (called after every step with its state).
    """
    opts = healer.options
    with Meter() as m:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        for p in student.parameters():
            p.requires_grad_(False)
        for message in healer.warnings(ctx):
            log.warning("%s", message)
        torch.manual_seed(seed)  # adapters' initial values
        module = healer.prepare(student, ctx)
        trained = [n for n, p in module.named_parameters() if p.requires_grad]
        checkpointing = _checkpointing(module, healer)
        est = estimate(module, student.config, ctx.adapter.num_layers(student), opts,
                       shared_bytes=_shared_bytes(module, teacher), checkpointing=checkpointing,
                       processes=ddp.size())
        device = next(module.parameters()).device
        check_fits(est, device, healer.name)
        _privatise(module, teacher)
        store = None
        if resume:
            store = CheckpointStore({"identity": identity or {}, "healer": healer.name,
                                     "options": options_to_dict(opts), "data": data.digest(), "seed": seed,
                                     "student": _fingerprint(module), "processes": ddp.size(),
                                     "trained": trained})
        log.info("healing with '%s': %d trainable parameters, %d training tokens, ~%.0f MB for training",
                 healer.name, est.trainable_params, data.train_tokens, est.total / 2**20)
        state = Loop(module, teacher if opts.objective == "kd" else None, data, opts, seed=seed, store=store,
                     on_step=on_step).run()
        if checkpointing and hasattr(module, "gradient_checkpointing_disable"):
            module.gradient_checkpointing_disable()
        healed = healer.finish(module, ctx)
        for name, p in healed.named_parameters():
            p.requires_grad_(False)
            if not torch.isfinite(p).all():
                raise ReplacemeError(f"healing left non-finite values in '{name}' (lower -o heal.lr)")
        healed.eval()
        if store is not None:
            distributed.on_root(store.clear)
    record = HealRecord(healer.name, options_to_dict(opts), data.describe, state, m.usage,
                        memory=est.to_dict(), trained=trained)
    return healed, record
