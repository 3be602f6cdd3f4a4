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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from replaceme.options import NoOptions
from replaceme.plan import Block, Plan
from replaceme.stats.request import StatsRequest

if TYPE_CHECKING:
    from replaceme.adapters import ModelAdapter
    from replaceme.stats.store import ActivationStats


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

    def check_model(self, adapter: ModelAdapter) -> None:
        """Raise a one-line :class:`ReplacemeError` if this stage (with its options) cannot
        be expressed on the architecture ``adapter`` describes. Called before the model's
        weights load (the adapter is found from ``config.json`` on an empty model); the
        default accepts."""

    def check_modules(self, model: Any, adapter: ModelAdapter) -> None:
        """Raise a one-line :class:`ReplacemeError` if this stage (with its options) cannot work
        on the module tree of ``model``. Called before the weights load, on an empty model
        built from ``config.json`` (parameters on the ``meta`` device): read names, types and
        shapes, never values. The default accepts."""

    def check_offload(self) -> None:
        """Raise a one-line :class:`ReplacemeError` if this stage, with its options, cannot
        run on a model that is never whole in memory (``--offload``). Called before the
        model loads; the default accepts."""


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
        seed: the run's seed (``--seed``), for a selector that draws anything at
            random; the same seed gives the same plan.
    """

    num_layers: int
    layers: int
    layers_added_per_block: int = 0
    separate_blocks: bool = False
    scorer: Any = None
    seed: int = 0


class Selector(Component):
    """Chooses the blocks to remove from the shared statistics."""

    #: True when :meth:`select` reads nothing but what :meth:`stats_request` asks for (no
    #: scorer, no compensation): the orchestration may then run a first pass for the
    #: selection alone and gather what the compensator needs for the chosen blocks only
    #: (two passes, far smaller statistics; see ``replaceme.stats.estimate``).
    selects_from_tables: ClassVar[bool] = False

    def needs_holdout(self) -> bool:
        """True when :meth:`select` (with these options) scores plans on held-out calibration
        batches alone: a calibration set too small to hold any out is then refused before
        the model loads. Default: False."""
        return False

    def candidates(self, ctx: SelectionContext) -> list[Block]:
        """Every block this selector could choose (limits what statistics are gathered)."""
        raise NotImplementedError

    def stats_request(self, ctx: SelectionContext) -> StatsRequest:
        """Statistics the selection itself needs (e.g. distance tables)."""
        return StatsRequest()

    def select(self, stats: ActivationStats, ctx: SelectionContext) -> Plan:
        """Return the plan: sorted, non-overlapping blocks."""
        raise NotImplementedError


@dataclass
class Compensation:
    """What replaces one removed block (base class; use a subclass).

    Attributes:
        block: the block it replaces.
        diagnostics: JSON-able numbers recorded in ``pruning.json``.
    """

    block: Block
    diagnostics: dict[str, Any] = field(default_factory=dict, kw_only=True)

    #: short name in ``pruning.json``
    kind: ClassVar[str] = ""


@dataclass
class NoCompensation(Compensation):
    """Nothing replaces the block: it is simply removed."""

    kind: ClassVar[str] = "none"


@dataclass
class LayerCompensation(Compensation):
    """A compensation written into a surviving layer.

    Attributes:
        layer: index (in the unpruned model) of that layer; default ``block.start - 1``.
    """

    layer: int = -1

    def __post_init__(self) -> None:
        if self.layer < 0:
            self.layer = self.block.start - 1


@dataclass
class LinearMap(LayerCompensation):
    """A map ``r ↦ r T`` on what layer ``layer``'s MLP adds to the residual stream
    (ReplaceMe: the layer before the block).

    Attributes:
        transform: T, ``[hidden, hidden]`` (a diagonal matrix when ``diagonal``).
        diagonal: T is diagonal (per-channel scaling); only such a map can be folded
            behind a post-norm (see :mod:`replaceme.adapters`).
    """

    transform: Any = None
    diagonal: bool = False
    kind: ClassVar[str] = "linear"


@dataclass
class ParameterUpdate(LayerCompensation):
    """New values for parameters of layer ``layer`` (e.g. LaCo's collapsed layer).

    Attributes:
        parameters: dotted name inside that layer -> tensor of the same shape.
    """

    parameters: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "params"


@dataclass
class ReplacementLayer(Compensation):
    """A module (a decoder layer) written into the block's first slot.

    Attributes:
        module: the replacement, callable exactly as the layer it replaces.
    """

    module: Any = None
    kind: ClassVar[str] = "layer"


@dataclass
class CompensationContext:
    """Read-only inputs of a compensator.

    Attributes:
        model: the unpruned model (do not mutate; copy what you train).
        adapter: where the blocks and projections are.
        stats: the shared statistics.
        device: torch device for heavy math.
        seed: the run's seed.
        work_bytes: what the run's memory budget leaves for a compensator's working
            memory (``--memory-budget`` less the statistics held; None: unbounded). A
            compensator that chunks its data sizes the chunks from it unless told.
    """

    model: Any
    adapter: ModelAdapter
    stats: ActivationStats
    device: Any
    seed: int = 0
    work_bytes: int | None = None


class Compensator(Component):
    """Estimates what replaces each block of a plan.

    Class attributes:
        produces: the :class:`Compensation` subclass it returns; the merger must
            accept it (checked before any work).
    """

    produces: ClassVar[type[Compensation]] = NoCompensation

    #: layers written back per removed block (a replacement layer: 1).
    layers_added_per_block: ClassVar[int] = 0
    #: the merger used when a recipe does not name one.
    default_merger: ClassVar[str | None] = None
    #: writes into layer ``start - 1`` of each block, so blocks must not touch.
    needs_layer_before: ClassVar[bool] = False
    #: trains something (an optimiser loop), shown in listings and used to order them by cost.
    needs_training: ClassVar[bool] = False

    @classmethod
    def default_request(cls) -> StatsRequest | None:
        """What :meth:`stats_request` asks for with the default options, for one
        example block (``[1, 3)``); None when the defaults cannot say (it raised)."""
        try:
            return cls().stats_request([Block(1, 3)])
        except Exception:  # noqa: BLE001 - a listing must not fail on a plugin's request
            return None

    @classmethod
    def capabilities(cls) -> dict[str, Any]:
        """Capability flags shown by ``replaceme methods``. ``needs_gram`` and
        ``needs_sample`` (a training token sample) are read from what
        :meth:`stats_request` asks for with the default options, so they cannot
        disagree with it (class attributes of those names are ignored)."""
        request = cls.default_request()
        return {
            "needs_gram": None if request is None else bool(request.gram_blocks),
            "needs_sample": None if request is None else request.sample_tokens > 0,
            "needs_training": cls.needs_training,
            "layers_added_per_block": cls.layers_added_per_block,
            "needs_layer_before": cls.needs_layer_before,
            "produces": cls.produces.kind,
        }

    def stats_request(self, candidates: list[Block]) -> StatsRequest:
        """Statistics needed to compensate any of ``candidates``."""
        return StatsRequest()

    def reads(self, plan: Plan) -> set[int]:
        """Decoder layers (unpruned numbering) whose weights :meth:`compensate` reads for
        ``plan``; ``--offload`` loads them from the checkpoint first. Default: each block's
        first layer when a replacement layer is written back (initialised from it), else none."""
        return {b.start for b in plan.blocks} if self.layers_added_per_block else set()

    def compensate(self, plan: Plan, ctx: CompensationContext) -> list[Compensation]:
        """One :class:`Compensation` per block of ``plan``, in order."""
        return [NoCompensation(block) for block in plan.blocks]


class Merger(Component):
    """Writes the compensations into the model; the only stage that mutates it.

    Class attributes:
        accepts: the :class:`Compensation` subclasses it can write.
    """

    accepts: ClassVar[tuple[type[Compensation], ...]] = (NoCompensation,)

    @classmethod
    def capabilities(cls) -> dict[str, Any]:
        return {"accepts": [c.kind for c in cls.accepts]}

    def merge(self, model: Any, adapter: ModelAdapter, plan: Plan, compensations: list[Compensation]) -> None:
        """Write ``compensations`` (one per block of ``plan``) into ``model`` and remove the blocks."""
        raise NotImplementedError

    def modifies(self, plan: Plan, compensations: list[Compensation]) -> set[int] | None:
        """Decoder layers (indices in the unpruned model) whose tensors :meth:`merge` writes in place.

        Required: every merger defines it. ``compare`` merges into a variant of the
        shared model (:mod:`replaceme.variant`) that owns copies of these layers only
        and shares every other tensor, so a merger must name every layer it writes
        into (in place, e.g. ``weight.copy_``). Deleting layers, swapping in new
        modules and editing the config need no declaration; a merger that writes
        nothing in place returns ``set()``. ``None`` means unknown: the variant then
        owns a copy of every decoder layer, and ``prune --offload`` refuses the merger.

        Deprecated fallback: a merger registered without its own ``modifies`` gets
        one warning at registration and this implementation, which answers None
        (the safe choice: nothing shared is ever written).
        """
        return None

    @classmethod
    def declares_modifies(cls) -> bool:
        """Whether this merger class defines :meth:`modifies` itself (or inherits one from a merger that does)."""
        return cls.modifies is not Merger.modifies


STAGES = ("selector", "compensator", "merger")
#: the optional fourth stage (:mod:`replaceme.healer`): trains the pruned model back
HEAL_STAGE = "healer"


@dataclass(frozen=True)
class Method:
    """A named recipe: selector + compensator + merger + default options per stage.

    Attributes:
        name: kebab-case method name (``--method``).
        selector, compensator, merger: component names (merger None: the
            compensator's ``default_merger``).
        healer: a healer the recipe heals with by default (``--heal none`` turns it
            off); None = training-free.
        defaults: per stage (``"selector"``, ``"compensator"``, ``"merger"``, ``"healer"``), option
            values applied before the user's, e.g. ``{"compensator": {"lr": 1e-3}}``.
            Validated against that stage's ``Options`` at registration (an unknown
            key drops the method with a warning naming its plugin); a stage swapped
            on the command line gets none of the defaults meant for the old one.
        description: one line for listings.
        reference: paper or source of the method.
    """

    name: str
    selector: str
    compensator: str
    merger: str | None = None
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    healer: str | None = None
    description: str = ""
    reference: str = ""

    def __post_init__(self) -> None:
        wrong = [k for k in self.defaults if k not in (*STAGES, HEAL_STAGE)]
        if wrong:
            raise ValueError(
                f"method '{self.name}': defaults are keyed by stage ({', '.join((*STAGES, HEAL_STAGE))}), "
                f"got {', '.join(map(repr, wrong))}"
            )
