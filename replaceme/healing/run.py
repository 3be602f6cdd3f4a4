"""Heal the outcome of one method: the glue ``prune`` and ``compare`` share.

The teacher is the unpruned model already in memory and the student the variant the
method merged into (:func:`replaceme.variant.make_variant`), which shares every
untouched tensor with it: no second copy of the model is loaded or made.
"""

from __future__ import annotations

from typing import Any

from replaceme.calibration import CalibrationSpec
from replaceme.healer import HealContext, HealData
from replaceme.healing.data import build_heal_batches
from replaceme.healing.stage import HealRecord, heal
from replaceme.methods import ResolvedMethod
from replaceme.pipeline import MethodOutcome


def heal_context(teacher: Any, adapter: Any, method: ResolvedMethod, outcome: MethodOutcome) -> HealContext:
    """What the healer may read about the method's result."""
    return HealContext(teacher=teacher, adapter=adapter, plan=outcome.plan, compensations=outcome.compensations,
                       merger=method.merger, layers_added_per_block=method.compensator.layers_added_per_block)


def heal_outcome(teacher: Any, adapter: Any, method: ResolvedMethod, outcome: MethodOutcome, tokenizer: Any,
                 data: HealData | None, *, calibration: CalibrationSpec | None, request: Any, seed: int = 0,
                 source: str | None = None, resume: bool = True, on_step: Any = None) -> tuple[Any, HealRecord]:
    """Heal ``outcome.model`` (a variant of ``teacher``) with ``method.healer``.

    Args:
        data: the healing text (None or no source: the calibration records the fit used).
        calibration, request: the calibration spec and statistics request of the pass
            (to rebuild the fit records and leave the held-out batches out).
        source: the model's name, part of the checkpoint identity.
    """
    healer = method.healer
    if healer is None:
        raise ValueError(f"method '{method.label}' has no healer")
    opts = healer.options
    batches = build_heal_batches(data or HealData(), tokenizer, seq_len=opts.seq_len, heldout=opts.heldout,
                                 seed=seed, calibration=calibration, request=request)
    epochs = opts.steps * opts.batch_size / batches.train.shape[0]
    if epochs > 8:
        import logging

        logging.getLogger(__name__).warning(
            "healing passes over its %d training sequences %.0f times; more text (--heal-data) overfits less",
            batches.train.shape[0], epochs)
    identity = {"source": source, "method": method.label, "options": method.options(),
                "plan": outcome.plan.to_dict()}
    return heal(outcome.model, teacher, healer, heal_context(teacher, adapter, method, outcome), batches, seed=seed,
                identity=identity, resume=resume, on_step=on_step)
