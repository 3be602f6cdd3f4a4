"""The one orchestration path of ``prune``, ``compare`` and ``distances``.

:func:`prepare` turns (model, methods × budgets, calibration) into the shared
statistics (refusing, before any work, a method that cannot be expressed on the
architecture); :func:`apply_method` then selects, compensates and merges one
method into a model, with timings and memory per stage."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replaceme.adapters import ModelAdapter
from replaceme.calibration import CalibrationData, CalibrationSpec
from replaceme.checks import check_layers  # noqa: F401  (re-exported: the check made again once the model is loaded)
from replaceme.components import Compensation
from replaceme.errors import ReplacemeError, first_line
from replaceme.methods import ResolvedMethod
from replaceme.plan import Plan
from replaceme.resources import Meter, Usage
from replaceme.settings import MemorySettings
from replaceme.stats.estimate import format_size
from replaceme.stats.request import StatsRequest

if TYPE_CHECKING:
    from replaceme.stats.store import ActivationStats

log = logging.getLogger(__name__)
#: held-out tokens of the shared pass (see :func:`replaceme.stats.collect.split_batches`)
HOLDOUT_TOKENS = 8192


def gather_stats(
    model: Any,
    adapter: ModelAdapter,
    calib: CalibrationData,
    request: StatsRequest,
    *,
    use_cache: bool = True,
    holdout_tokens: int = HOLDOUT_TOKENS,
    spill: Any = None,
    stats_device: Any = None,
    final: bool = True,
) -> Any:
    """Run the shared pass, or load it from the on-disk cache when inputs match.

    With ``spill`` (:class:`~replaceme.stats.spill.Spill`) the activation sample is
    kept in memory-mapped files, and the cache is not used (it would copy the
    sample back into one file).

    Under ``torchrun`` every rank runs its shard of the batches and rank 0 alone reads
    and writes the cache (:func:`replaceme.distributed.shared_pass`); ``final=False``
    keeps every rank for a second pass.
    """
    from replaceme import distributed
    from replaceme.stats.cache import cache_key, load_cached, model_fingerprint, save_cached
    from replaceme.stats.collect import collect_stats

    key = None
    if use_cache and spill is None:
        key = cache_key(
            {
                "model": model_fingerprint(model),
                "dtype": str(next(model.parameters()).dtype),
                "calibration": calib.spec.to_dict(),
                "request": request.to_dict(),
                "holdout_tokens": holdout_tokens,
            }
        )

    def load() -> Any:
        cached = load_cached(key, (len(adapter.layers(model)), int(model.config.hidden_size)), request)
        if cached is not None:
            log.info("statistics loaded from cache (key %s)", key[:12])
        return cached

    def run(batches: Any) -> Any:
        return collect_stats(model, adapter, calib, request, holdout_tokens=holdout_tokens, spill=spill,
                             stats_device=stats_device, batches=batches)

    return distributed.shared_pass(next(model.parameters()).device, calib.num_batches, run, store=spill, final=final,
                                   load=load if key else None, save=(lambda stats: save_cached(key, stats)) if key else None)


@dataclass
class MethodOutcome:
    """What applying one method to a model produced.

    Attributes:
        plan: the blocks chosen.
        compensations: one per block.
        usage: ``select``/``compensate``/``merge`` -> time and peak memory.
        layers_before, layers_after: decoder layer counts.
        model: the pruned model (the input model, or its variant with ``target=VARIANT``).
    """

    plan: Plan
    compensations: list[Compensation]
    usage: dict[str, Usage] = field(default_factory=dict)
    layers_before: int = 0
    layers_after: int = 0
    model: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "compensations": [
                {"block": [c.block.start, c.block.end], "kind": c.kind, "diagnostics": c.diagnostics}
                for c in self.compensations
            ],
            "layers_before": self.layers_before,
            "layers_after": self.layers_after,
            "usage": {k: u.to_dict() for k, u in self.usage.items()},
        }


@dataclass
class Run:
    """One method at one layer budget; ``label`` names it (default: the method's label)."""

    method: ResolvedMethod
    layers: int
    label: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.label or self.method.label, self.layers)


@dataclass
class Prepared:
    """Statistics and plans for the runs of one model (see :func:`prepare`).

    Attributes:
        stats: the shared statistics (empty when nothing was requested).
        request: the union of every run's request (plus ``extra``).
        calibration: the calibration spec used (None when no pass ran).
        errors: ``(label, layers) -> one-line error`` for runs refused on this
            architecture (their statistics are not gathered).
        usage: ``calibration``/``statistics`` -> time and memory.
        memory: bytes of Gram sums and activation sample, and whether the sample
            was spilled to disk (for ``pruning.json``).
    """

    stats: ActivationStats
    request: StatsRequest
    calibration: CalibrationSpec | None
    errors: dict[tuple[str, int], str] = field(default_factory=dict)
    usage: dict[str, Usage] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for rows and logs."""
    text = first_line(str(exc))
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, ReplacemeError) else text


def prepare(
    model: Any,
    adapter: ModelAdapter,
    runs: list[Run],
    calibration: CalibrationSpec | None,
    tokenizer: Any,
    *,
    extra: StatsRequest | None = None,
    use_cache: bool = True,
    seed: int = 0,
    strict: bool = True,
    offloaded: Any = None,
    memory: MemorySettings | None = None,
) -> Prepared:
    """The one orchestration path of ``prune``, ``compare`` and ``distances``:
    (model, methods × budgets, calibration) → shared statistics.

    Steps: every budget is checked and every method is asked whether it can be
    expressed on this architecture (before any work); the statistics requests
    of the remaining runs (and ``extra``) are united; the calibration set is
    built and the shared pass run (or loaded from the cache) once, unless
    nothing was requested. Each run is then carried out by :func:`apply_method`.

    Args:
        strict: raise the first refusal (``prune``); else record it in
            :attr:`Prepared.errors` and go on (``compare``).
        offloaded: an :class:`replaceme.offload.OffloadedModel` (``--offload``):
            the pass then reads the checkpoint one layer at a time.
        memory: the run's :class:`~replaceme.settings.MemorySettings`: ``spill_dir``
            keeps the activation sample in memory-mapped files under this directory
            (:mod:`replaceme.stats.spill`) instead of RAM; ``gram_device`` is where the
            float64 Gram sums live during the pass (default: the compute device);
            ``stats_passes``: ``auto``, ``1`` or ``2`` statistics passes (:mod:`replaceme.passes`).
    """
    num_layers = adapter.num_layers(model)
    errors: dict[tuple[str, int], str] = {}
    live = []
    for run in runs:
        try:
            check_layers(run.layers, num_layers)
            run.method.check_model(adapter)
            run.method.check_modules(model, adapter)
            live.append((run, run.method.stats_request(num_layers, run.layers)))
        except Exception as exc:
            if strict:
                raise
            errors[run.key] = one_line(exc)
    request = StatsRequest() if extra is None else extra
    for _, req in live:
        request = request.union(req)
    if request.is_empty:  # e.g. block-removal of a fixed range: no data needed
        from replaceme import distributed
        from replaceme.stats.store import ActivationStats

        distributed.skip_pass()  # under torchrun: nothing to share, rank 0 does it all
        empty = ActivationStats(num_layers=num_layers, hidden_size=int(model.config.hidden_size))
        return Prepared(empty, request, None, errors=errors)
    if calibration is None:
        labels = ", ".join(sorted({run.key[0] for run, _ in live})) or "this command"
        raise ReplacemeError(f"{labels} needs calibration data (a text file or a hub dataset)")
    spec = calibration if isinstance(calibration, CalibrationSpec) else CalibrationSpec(str(calibration), seed=seed)
    stats, usage, footprint = _statistics(model, adapter, request, spec, tokenizer, live, extra, use_cache=use_cache,
                                          offloaded=offloaded, memory=memory or MemorySettings())
    return Prepared(stats, request, spec, errors=errors, usage=usage, memory=footprint)


def _statistics(model: Any, adapter: ModelAdapter, request: StatsRequest, spec: CalibrationSpec, tokenizer: Any,
                live: list, extra: StatsRequest | None, *, use_cache: bool, offloaded: Any,
                memory: MemorySettings) -> tuple[Any, dict[str, Usage], dict[str, Any]]:
    """Calibration set + shared pass(es) for ``request``: the estimate of what the statistics
    will hold is logged first, and recorded with the bytes they hold (and where)."""
    from replaceme import distributed
    from replaceme.calibration import build_calibration
    from replaceme.loading import resolve_device

    usage: dict[str, Usage] = {}
    gram_device = resolve_device(memory.gram_device) if memory.gram_device is not None else None
    spill_dir = memory.spill_dir
    with Meter() as m:
        calib = build_calibration(spec, tokenizer)
    usage["calibration"] = m.usage
    from replaceme.stats.spill import Spill

    plan = _plan(model, adapter, calib, request, live, extra, memory, offloaded is not None)
    # --offload keeps its activation sample on disk too (system temporary directory by
    # default): the whole point is memory that does not grow with the model or the data
    spill = Spill(spill_dir) if plan.spill else None

    def one_pass(req: StatsRequest, final: bool = True) -> Any:  # final: under torchrun the ranks > 0 then leave
        if offloaded is not None:
            from replaceme.stats.layerwise import collect_stats_layerwise

            return distributed.shared_pass(offloaded.device, calib.num_batches, lambda batches: collect_stats_layerwise(
                offloaded, calib, req, spill=spill, stats_device=gram_device, batches=batches), store=spill, final=final)
        return gather_stats(model, adapter, calib, req, use_cache=use_cache, spill=spill, stats_device=gram_device,
                            final=final)

    try:
        with Meter() as m:
            stats = one_pass(plan.first, final=not plan.two)
            if plan.two:
                from replaceme.passes import merge_passes, second_request

                # chosen on rank 0 from the tables every rank holds, and given to all (one request for all ranks)
                second = distributed.from_root(
                    lambda: plan.capped(second_request(stats, live, adapter.num_layers(model))))
                stats = merge_passes(stats, one_pass(second))
    finally:
        if spill is not None:
            spill.close()  # every file is already unlinked; the mapped tensors stay valid
    usage["statistics"] = m.usage
    stats.work_bytes = plan.work_bytes
    log.info("shared calibration pass: %d tokens, %.1f s", stats.tokens, m.usage.seconds)
    gram_at = next((str(g.xtx.device) for g in stats.gram.values()), None)
    footprint = {**stats.memory_bytes(), "gram_device": gram_at, "sample_on_disk": spill is not None,
                 "spilled_bytes": spill.bytes_written if spill is not None else 0, **plan.to_dict(),
                 "estimate": plan.chosen.to_dict(), "one_pass_estimate": plan.one_pass.to_dict()}
    return stats, usage, footprint


def _plan(model, adapter, calib, request, live, extra, memory: MemorySettings, offload: bool):
    """The statistics plan within the run's budgets (:func:`replaceme.passes.plan_statistics`),
    printed before the pass (and a capped sample warned about)."""
    from replaceme import distributed
    from replaceme.offload.budget import parse_size, resolve_budget
    from replaceme.passes import plan_statistics
    from replaceme.resources import auto_memory_budget
    from replaceme.stats.collect import split_batches

    def slots_of(req: StatsRequest) -> int:  # token slots (B × T) of the batches the sample keeps (as plan_batches)
        if not req.wants_sample:
            return 0
        holdout, sample = split_batches(calib, req.sample_tokens, HOLDOUT_TOKENS, calib.spec.seed,
                                        holdout_fraction=calib.spec.holdout_fraction)
        return sum(calib.masks[b].numel() for b in {*holdout, *sample})

    budget = parse_size(memory.memory_budget, "--memory-budget")
    if budget is None:
        budget = auto_memory_budget(sum(p.numel() * p.element_size() for p in model.parameters()))
    disk = resolve_budget(parse_size(memory.disk_budget), memory.spill_dir)
    # under torchrun rank 0 plans for all (budgets from its memory and disk): one plan, the same passes everywhere
    plan = distributed.from_root(lambda: plan_statistics(
        live, extra, request, num_layers=adapter.num_layers(model), hidden=int(model.config.hidden_size),
        dtype_bytes=next(model.parameters()).element_size(), slots_of=slots_of, memory_budget=budget,
        disk_budget=disk, passes=str(memory.stats_passes), spill=memory.spill_dir is not None or offload))
    log.info("%s", plan.describe())
    log.debug("statistics estimate: %s", plan.chosen.describe())
    if plan.sample_cap is not None:
        log.warning("the activation sample is drawn smaller to fit --disk-budget %s beside --memory-budget %s: "
                    "%d tokens instead of %d (fewer whole batches)", format_size(plan.disk_budget), format_size(plan.memory_budget),
                    plan.sample_cap, request.sample_tokens)
    return plan


def apply_method(
    model: Any,
    adapter: ModelAdapter,
    method: ResolvedMethod,
    layers: int,
    stats: ActivationStats,
    *,
    device: Any = None,
    seed: int = 0,
    target: Any = None,
) -> MethodOutcome:
    """Select, compensate and merge ``method`` on ``model``.

    ``target`` (a :class:`replaceme.variant.MergeTarget`) says where the merge goes:
    by default (``IN_PLACE``) ``model`` is pruned in place; with ``VARIANT`` it is left
    untouched and the merge goes into a variant (:func:`replaceme.variant.make_variant`)
    that shares every tensor the merger does not write; with an ``OnDemandTarget``
    (``--offload``) the decoder layers the compensator reads (a replacement layer is
    initialised from each block's first layer) and those the merger writes
    (``Merger.modifies``) are loaded from the checkpoint first. The pruned model,
    ``outcome.model``, has exactly ``layers`` fewer decoder layers, whatever the method.
    """
    import dataclasses

    from replaceme.scoring import PlanScorer
    from replaceme.variant import IN_PLACE

    target = target or IN_PLACE

    num_layers = adapter.num_layers(model)
    check_layers(layers, num_layers)
    method.check_model(adapter)
    device = device or next(model.parameters()).device
    offloaded = getattr(target, "offloaded", None)
    scorer = PlanScorer(model, adapter, stats, method.compensator, method.merger, device=device, seed=seed,
                        offloaded=offloaded)
    ctx = dataclasses.replace(method.selection_context(num_layers, layers), scorer=scorer, seed=seed)
    usage: dict[str, Usage] = {}
    with Meter() as m:
        plan = method.selector.select(stats, ctx)
    usage["select"] = m.usage
    added = method.compensator.layers_added_per_block * len(plan.blocks)
    if plan.layers_in_blocks - added != layers:
        raise ReplacemeError(
            f"selector '{method.selector.name}' chose {plan.layers_in_blocks} layers in {len(plan.blocks)} blocks, "
            f"which with compensator '{method.compensator.name}' removes {plan.layers_in_blocks - added}, not {layers}"
        )
    log.info("%s: blocks %s", method.label, ", ".join(map(str, plan.blocks)))
    target.reading(method.compensator.reads(plan))
    with Meter() as m:  # a selector that scored this plan already compensated it
        compensations = scorer.compensations(plan)
    usage["compensate"] = m.usage
    for comp in compensations:
        if not isinstance(comp, method.merger.accepts):
            raise ReplacemeError(f"merger '{method.merger.name}' cannot write a '{comp.kind}' compensation")
    written = method.merger.modifies(plan, compensations)
    target.writing(written, method.merger.name)
    with Meter() as m:
        model = target.model_for(model, adapter, written)
        method.merger.merge(model, adapter, plan, compensations)
    usage["merge"] = m.usage
    after = adapter.num_layers(model)
    if after != num_layers - layers:
        raise RuntimeError(f"merger '{method.merger.name}' left {after} layers, expected {num_layers - layers}")
    return MethodOutcome(plan, compensations, usage, num_layers, after, model)
