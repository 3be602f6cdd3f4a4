"""Heal the outcome of one method: the glue ``prune`` and ``compare`` share.

The teacher is the unpruned model already in memory and the student the variant the
method merged into (:func:`replaceme.variant.make_variant`), which shares every
untouched tensor with it: no second copy of the model is loaded or made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replaceme.calibration import CalibrationSpec
from replaceme.distributed import ddp
from replaceme.healer import HealContext, HealData
from replaceme.healing.data import build_heal_batches
from replaceme.healing.stage import HealRecord, heal
from replaceme.methods import ResolvedMethod
from replaceme.pipeline import MethodOutcome, apply_method


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


def _to_device(comp: Any, device: Any) -> Any:
    """A compensation received from rank 0 with its tensors and modules moved to ``device``."""
    import torch

    for name, value in vars(comp).items():
        if isinstance(value, (torch.Tensor, torch.nn.Module)):
            setattr(comp, name, value.to(device))
        elif isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values()):
            setattr(comp, name, {k: v.to(device) for k, v in value.items()})
    return comp


def prune_and_heal(model: Any, adapter: Any, method: ResolvedMethod, layers: int, prepared: Any, tokenizer: Any,
                   data: Any, *, seed: int = 0, source: str | None = None) -> tuple[MethodOutcome, HealRecord]:
    """Prune a variant of ``model`` with ``method`` and heal it (``model`` is the teacher).

    Under ``torchrun`` (after :func:`replaceme.distributed.ddp.keep`) rank 0 selects,
    compensates and merges; every process receives the plan and compensations, merges
    them into its own variant, and all heal together (DDP); :func:`~replaceme.distributed.ddp.release`
    then ends the job on the other ranks.
    """
    from replaceme.variant import VARIANT, make_variant

    mine: dict[str, MethodOutcome] = {}

    def decide() -> tuple[Any, list[Any]]:
        mine["outcome"] = apply_method(model, adapter, method, layers, prepared.stats, seed=seed, target=VARIANT)
        return mine["outcome"].plan, mine["outcome"].compensations

    plan, compensations = ddp.from_root(decide)
    outcome = mine.get("outcome")
    if outcome is None:  # another process: rank 0's decision, merged into this process's variant
        device = next(model.parameters()).device
        compensations = [_to_device(c, device) for c in compensations]
        variant = make_variant(model, adapter, method.merger.modifies(plan, compensations))
        method.merger.merge(variant, adapter, plan, compensations)
        outcome = MethodOutcome(plan, compensations, {}, adapter.num_layers(model), adapter.num_layers(variant), variant)
    heal_data = HealData(str(data)) if isinstance(data, (str, Path)) else data
    healed, record = heal_outcome(model, adapter, method, outcome, tokenizer, heal_data,
                                  calibration=prepared.calibration, request=prepared.request, seed=seed, source=source)
    ddp.release()
    outcome.model = healed
    return outcome, record
