"""Base classes of the three pipeline stages a method plugin contributes.

A *method* is a named recipe: one :class:`Selector` (which blocks go), one
:class:`Compensator` (what replaces them) and one :class:`Merger` (how that is
written into the model), plus default options. The framework owns loading,
calibration, statistics, saving, evaluation and reporting; components own only
their math and receive typed objects.

Only mergers mutate the model. Nothing here imports torch, so listing methods
stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from replaceme.options import NoOptions
from replaceme.plan import Block, Plan

if TYPE_CHECKING:
    from replaceme.adapters import ModelAdapter
    from replaceme.stats import ActivationStats, StatsRequest


class Component:
    """Common shape of selectors, compensators and mergers.

    Class attributes:
        name: kebab-case name used on the CLI and in recipes.
        description: one line for listings.
        Options: a dataclass of typed options (see :mod:`replaceme.options`).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any | None = None):
        self.options = options if options is not None else self.Options()

    @classmethod
    def capabilities(cls) -> dict[str, Any]:
        """Capability flags shown by ``replaceme methods``."""
        return {}


@dataclass(frozen=True)
class SelectionContext:
    """What a selector needs to know about the request.

    Attributes:
        num_layers: decoder layers of the unpruned model (L).
        layers: net number of layers to remove (``--layers N``).
        layers_added_per_block: layers the compensator writes back per block
            (1 for a trained replacement layer, else 0); a block then spans
            ``N / num_blocks + layers_added_per_block`` layers.
        separate_blocks: chosen blocks must not touch (the compensator writes
            into the layer just before each block, which must survive).
        scorer: a :class:`replaceme.scoring.PlanScorer` supplied by the
            orchestration at selection time (None when listing candidates):
            ``scorer.score(plan)`` applies the method's own compensator and
            merger to a variant of the model and measures the calibration loss,
            KL and last-hidden-state cosine, so a selector can choose by what
            the model actually loses, whatever the compensator.
    """

    num_layers: int
    layers: int
    layers_added_per_block: int = 0
    separate_blocks: bool = False
    scorer: Any = None


class Selector(Component):
    """Chooses the blocks to remove from the shared statistics."""

    def candidates(self, ctx: SelectionContext) -> list[Block]:
        """Every block this selector could choose (limits what statistics are gathered)."""
        raise NotImplementedError

    def stats_request(self, ctx: SelectionContext) -> StatsRequest:
        """Statistics the selection itself needs (e.g. distance tables)."""
        from replaceme.stats import StatsRequest

        return StatsRequest()

    def select(self, stats: ActivationStats, ctx: SelectionContext) -> Plan:
        """Return the plan: sorted, non-overlapping blocks."""
        raise NotImplementedError


@dataclass
class Compensation:
    """What replaces one removed block.

    Attributes:
        block: the block it replaces.
        kind: ``"none"``, ``"linear"`` (a map T, ``hidden × hidden``, applied
            as ``x ↦ x T`` to the MLP output of layer ``block.start - 1``) or
            ``"layer"`` (a decoder layer or module written at ``block.start``).
        value: the tensor or module (None for ``"none"``).
        diagnostics: JSON-able numbers recorded in ``pruning.json``.
    """

    block: Block
    kind: str = "none"
    value: Any = None
    diagnostics: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompensationContext:
    """Read-only inputs of a compensator.

    Attributes:
        model: the unpruned model (do not mutate; copy what you train).
        adapter: where the blocks and projections are.
        stats: the shared statistics.
        device: torch device for heavy math.
        seed: the run's seed.
    """

    model: Any
    adapter: ModelAdapter
    stats: ActivationStats
    device: Any
    seed: int = 0


class Compensator(Component):
    """Estimates what replaces each block of a plan."""

    #: layers written back per removed block (a replacement layer: 1).
    layers_added_per_block: ClassVar[int] = 0
    #: the merger used when a recipe does not name one.
    default_merger: ClassVar[str] = "remove"
    #: writes into layer ``start - 1`` of each block, so blocks must not touch.
    needs_layer_before: ClassVar[bool] = False
    needs_gram: ClassVar[bool] = False
    needs_sample: ClassVar[bool] = False
    needs_training: ClassVar[bool] = False

    @classmethod
    def capabilities(cls) -> dict[str, Any]:
        return {
            "needs_gram": cls.needs_gram,
            "needs_sample": cls.needs_sample,
            "needs_training": cls.needs_training,
            "layers_added_per_block": cls.layers_added_per_block,
            "needs_layer_before": cls.needs_layer_before,
        }

    def stats_request(self, candidates: list[Block]) -> StatsRequest:
        """Statistics needed to compensate any of ``candidates``."""
        from replaceme.stats import StatsRequest

        return StatsRequest()

    def compensate(self, plan: Plan, ctx: CompensationContext) -> list[Compensation]:
        """One :class:`Compensation` per block of ``plan``, in order."""
        return [Compensation(block) for block in plan.blocks]


class Merger(Component):
    """Writes the compensations into the model; the only stage that mutates it."""

    def merge(self, model: Any, adapter: ModelAdapter, plan: Plan, compensations: list[Compensation]) -> None:
        raise NotImplementedError

    def modifies(self, plan: Plan, compensations: list[Compensation]) -> set[int] | None:
        """Decoder layers (indices in the unpruned model) whose tensors :meth:`merge` writes in place.

        ``compare`` merges into a variant of the shared model (:mod:`replaceme.variant`)
        that owns copies of these layers only and shares every other tensor, so a
        merger must name every layer it writes into (in place, e.g. ``weight.copy_``).
        Deleting layers, swapping in new modules and editing the config need no
        declaration. ``None`` (the default) means unknown: the variant then owns a
        copy of every decoder layer.
        """
        return None


@dataclass(frozen=True)
class Method:
    """A named recipe: selector + compensator + merger + default options.

    Attributes:
        name: kebab-case method name (``--method``).
        selector, compensator, merger: component names.
        defaults: option values applied before the user's.
        description: one line for listings.
        reference: paper or source of the method.
    """

    name: str
    selector: str
    compensator: str
    merger: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    reference: str = ""
