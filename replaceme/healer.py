"""The fourth stage: a :class:`Healer` trains the pruned model back after the merge.

A healer owns only *what trains*: :meth:`Healer.prepare` marks (or adds) the
trainable parameters of the student and :meth:`Healer.finish` turns the trained
module back into a standard model. The framework (:mod:`replaceme.healing`) owns
everything else: the data, the objective (next-token cross-entropy, or
distillation from the unpruned model), the optimiser and schedule, gradient
accumulation, checkpoints, ``torchrun`` data parallelism and the records.

Every healer shares the training options of :class:`HealOptions` (steps, lr,
batch size, objective, ...); a healer adds its own by subclassing it. Nothing here
imports torch, so listing healers stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from replaceme.components import Component, Compensation, Merger
from replaceme.errors import ReplacemeError
from replaceme.options import option
from replaceme.plan import Plan

if TYPE_CHECKING:
    from replaceme.adapters import ModelAdapter


@dataclass
class HealOptions:
    """Training options every healer has (set with ``-o KEY VALUE``, or ``-o heal.KEY VALUE``).

    The defaults heal stories260K-sized models on a CPU in about a minute; for 7B-class
    models see the README (``lr 1e-4`` for LoRA, ``2e-5`` for ``full``, more steps).
    """

    objective: Literal["kd", "ce"] = option(
        "kd", "kd: KL(p_teacher || p_student) on next-token distributions, the teacher being the unpruned "
        "model already in memory; ce: next-token cross-entropy on the healing text")
    temperature: float = option(1.0, "kd temperature tau: both logits are divided by tau and the KL is "
                                     "multiplied by tau^2", minimum=0.05, maximum=100.0)
    ce_weight: float = option(0.0, "kd only: loss = (1 - w) * KL + w * CE", minimum=0.0, maximum=1.0)
    steps: int = option(300, "optimiser steps", minimum=1, maximum=10_000_000)
    lr: float = option(2e-3, "peak learning rate (AdamW)", minimum=0.0, maximum=10.0)
    warmup: int = option(20, "steps of linear warm-up before the cosine decay", minimum=0)
    min_lr_ratio: float = option(0.1, "the cosine decay ends at lr * min_lr_ratio", minimum=0.0, maximum=1.0)
    weight_decay: float = option(0.0, "AdamW decoupled weight decay", minimum=0.0)
    grad_clip: float = option(1.0, "maximum global gradient norm (0: no clipping)", minimum=0.0)
    batch_size: int = option(16, "sequences per optimiser step (all processes together)", minimum=1)
    micro_batch: int = option(0, "sequences per forward/backward, gradients accumulated (0: the whole batch); "
                                 "under torchrun, per process", minimum=0)
    seq_len: int = option(128, "tokens per training sequence (the healing text is packed)", minimum=2)
    eval_every: int = option(50, "held-out loss every this many steps (0: only at the start and the end)",
                             minimum=0)
    heldout: int = option(32, "sequences of the healing text held out for the held-out loss", minimum=1)
    patience: int = option(0, "stop when the held-out loss has not improved for this many evaluations and keep "
                              "the best weights (0: never stop early)", minimum=0)
    checkpoint_every: int = option(50, "save a resumable checkpoint every this many steps (0: never)", minimum=0)
    gradient_checkpointing: Literal["auto", "on", "off"] = option(
        "auto", "recompute activations in the backward pass (auto: on a GPU)")
    bf16: Literal["auto", "on", "off"] = option("auto", "bf16 autocast (auto: on a CUDA GPU that supports it)")


@dataclass
class HealContext:
    """What a healer may read while preparing the student.

    Attributes:
        teacher: the unpruned model (never modify it: the student shares its untouched tensors).
        adapter: where the decoder layers and projections are.
        plan: the blocks that were removed.
        compensations: what replaced each block.
        merger: the merger that wrote them (:meth:`Merger.modifies` names the layers it wrote).
        layers_added_per_block: layers the compensator wrote back per block (a replacement layer: 1).
    """

    teacher: Any
    adapter: ModelAdapter
    plan: Plan
    compensations: list[Compensation]
    merger: Merger
    layers_added_per_block: int = 0

    def origins(self) -> list[int]:
        """For each decoder layer of the pruned model, the index of the layer of the
        unpruned model it comes from (a replacement layer: its block's first index)."""
        num_layers = self.adapter.num_layers(self.teacher)
        out: list[int] = []
        index = 0
        for block in self.plan.blocks:
            out.extend(range(index, block.start))
            out.extend([block.start] * self.layers_added_per_block)
            index = block.end
        out.extend(range(index, num_layers))
        return out


def check_batch_processes(batch_size: int, processes: int) -> None:
    """Refuse (one line) a global batch that ``processes`` training together (``torchrun``)
    cannot share evenly; checked before the model loads and again before training."""
    if batch_size % processes:
        raise ReplacemeError(f"healing: batch_size {batch_size} is not a multiple of the {processes} processes")


class Healer(Component):
    """Trains part of a pruned model back (base class of the ``register_healers`` hook).

    Class attributes:
        name, description: as for every component.
        Options: a subclass of :class:`HealOptions` (its fields are the training options).
        trains: a short phrase for listings ("LoRA adapters", "all weights", ...).
    """

    Options: ClassVar[type] = HealOptions
    trains: ClassVar[str] = ""

    @classmethod
    def capabilities(cls) -> dict[str, Any]:
        return {"trains": cls.trains}

    def prepare(self, student: Any, ctx: HealContext) -> Any:
        """Make ``student`` trainable: set ``requires_grad`` on exactly what trains (the
        framework has frozen every parameter before) or wrap it (e.g. with adapters).

        Returns:
            The module to train, called like the model (``input_ids``, ``attention_mask``)
            and returning an output with ``logits``. A trainable parameter that shares
            storage with the teacher is given its own copy by the framework.
        """
        raise NotImplementedError

    def finish(self, trained: Any, ctx: HealContext) -> Any:
        """Turn the trained module into a standard model (e.g. merge adapters). Must not
        write in place into a tensor shared with the teacher. Default: ``trained``."""
        return trained

    def warnings(self, ctx: HealContext) -> list[str]:
        """Messages logged as warnings before training (e.g. memory)."""
        return []


@dataclass
class HealData:
    """Where the healing text comes from (``--heal-data``; same formats and record
    slices as ``--calib``). ``source`` None: the calibration records the compensation
    was fit on (the held-out calibration batches excluded).

    Attributes:
        source: file or hub dataset, optionally with a ``[start:end]`` record slice.
        column, split: as for calibration.
        samples: records used after a seeded shuffle (None: all of them).
    """

    source: str | None = None
    column: str = "text"
    split: str = "train"
    samples: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def text_source(self) -> Any:
        """The :class:`~replaceme.data.texts.TextSource` of ``source`` (which must be set)."""
        from replaceme.data.texts import TextSource

        return TextSource(str(self.source), column=self.column, split=self.split)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source or "calibration records (fit batches)", "given": self.source is not None,
                "column": self.column,
                "split": self.split, "samples": self.samples, **self.extra}
