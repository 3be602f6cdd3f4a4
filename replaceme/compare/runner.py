"""Run a comparison: one model load, one calibration pass, one evaluation spec for
all, rows saved as they finish.

Three parts: the :class:`~replaceme.compare.store.RowStore` keeps rows, manifest and
exports; the :class:`~replaceme.compare.schedule.Schedule` says which rows are left
and in what order; this module executes them. Each method prunes a variant of the
loaded model (:mod:`replaceme.variant`) that shares every tensor its merge does not
write, so memory stays about one model whatever the number of methods."""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replaceme.compare.external import check_tokenizers, evaluate_included
from replaceme.compare.plan import ComparePlan
from replaceme.compare.results import BASELINE, Row
from replaceme.compare.schedule import METHOD, Schedule, Slot, shared_identity
from replaceme.compare.store import RowStore
from replaceme.distributed import root_result
from replaceme.errors import ReplacemeError

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    """The outcome: rows in table order, provenance, and whether any row failed."""

    rows: list[Row]
    provenance: dict[str, Any] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.error]


def comparison_inputs(plan: ComparePlan) -> list[Any]:
    """Every path the comparison reads (an output must not be one of them, nor inside one)."""
    from replaceme.data.texts import TextSource

    heal = [TextSource(plan.heal_data["source"]).base] if (plan.heal_data or {}).get("source") else []
    return [plan.model, plan.calibration.text_source.base, *(TextSource(p).base for p in plan.evaluation.ppl),
            *(e.path for e in plan.include), *heal]


def check_comparison_inputs(plan: ComparePlan) -> None:
    """The model, device, calibration text, perplexity text and task names, before any work."""
    from replaceme.checks import check_evaluation_inputs, check_model_inputs, check_text_input

    check_model_inputs(plan.model, plan.device)
    if plan.gram_device is not None:
        from replaceme.loading import check_device_name

        check_device_name(plan.gram_device, "--gram-device")
    for entry in plan.include:
        check_model_inputs(entry.path)
    check_text_input(plan.calibration.text_source, "--calib")
    if (plan.heal_data or {}).get("source"):
        from replaceme.data.texts import TextSource

        check_text_input(TextSource(plan.heal_data["source"], column=plan.heal_data.get("column", "text"),
                                    split=plan.heal_data.get("split", "train")), "--heal-data")
    check_evaluation_inputs(plan.evaluation)


@root_result
def run_comparison(plan: ComparePlan, output: Path | None = None, *, overwrite: bool = False,
                   use_cache: bool = True, drop_refused: bool = False) -> Comparison | None:
    """Run ``plan``; with ``output``, rows are saved as they finish and reused on a re-run.

    Any exception a method raises (refusal, selection, compensation, merge,
    evaluation) becomes that row's error and the others go on; a
    failed row is saved as failed and retried by the next run. Everything that
    can be checked (methods and options, model, device, data, tasks, the output
    directory) is checked before the model is loaded, and ``output`` is created
    only once the model has loaded. Under ``torchrun`` rank 0 returns the comparison
    and writes it; the other ranks share the calibration pass and return ``None``.

    A method that cannot run at some budget (on this architecture, with ``offload``, ...)
    refuses the comparison before the model loads (:mod:`replaceme.preflight`); with
    ``drop_refused`` (the default list of methods, which the user did not choose) it is
    left out with a warning instead.
    """
    from replaceme import distributed
    from replaceme.methods import resolve_method
    from replaceme.outputs import check_work_dirs

    resolved = {m.label: resolve_method(m.name, m.options, selector=m.selector, compensator=m.compensator, healer=m.heal)
                for m in plan.methods}
    check_comparison_inputs(plan)
    plan, resolved = _preflight(plan, resolved, drop_refused)
    store = RowStore(output)
    identity, inputs = shared_identity(plan), comparison_inputs(plan)
    store.check(identity, inputs, overwrite)
    check_work_dirs(inputs, spill_dir=plan.spill_dir, output=output, cache=use_cache)
    with distributed.writer_lock(output):  # under torchrun rank 0 alone writes
        create = functools.partial(store.open, identity, plan.to_dict(), inputs, overwrite)
        return _run(plan, resolved, store, create, use_cache)


def _preflight(plan: ComparePlan, resolved: dict[str, Any], drop_refused: bool) -> tuple[ComparePlan, dict[str, Any]]:
    """Every refusal decidable before the model loads (:func:`replaceme.preflight.preflight`); the
    plan without the methods left out (``drop_refused``)."""
    from replaceme.preflight import Intent, preflight

    ev = plan.evaluation
    intent = Intent(plan.model, runs=[(label, method, n) for label, method in resolved.items() for n in plan.layers],
                    loading=plan.loading, memory=plan.memory, tasks=list(ev.tasks),
                    task_data=ev.task_data, tasks_dir=ev.tasks_dir, include=[e.path for e in plan.include],
                    calibration=plan.calibration, evaluation=ev,
                    strict=False)
    errors = preflight(intent)
    _check_included_tokenizers(plan)
    if not errors:
        return plan, resolved
    (label, n), first = next(iter(errors.items()))
    if not drop_refused:
        more = f" (and {len(errors) - 1} more refusal(s))" if len(errors) > 1 else ""
        raise ReplacemeError(f"{label} at --layers {n}: {first}{more}")
    refused = {label for label, _ in errors}
    for label in refused:
        log.warning("%s left out: %s", label, next(e for (lbl, _), e in errors.items() if lbl == label))
    kept = [m for m in plan.methods if m.label not in refused]
    if not kept:
        raise ReplacemeError(f"no method can run here: {label} at --layers {n}: {first}")
    return dataclasses.replace(plan, methods=kept), {k: v for k, v in resolved.items() if k not in refused}


def _check_included_tokenizers(plan: ComparePlan) -> None:
    """Every ``--include-model`` tokenizes as the model does, before the model loads (a hub id's
    tokenizer is compared once it is downloaded, after loading)."""
    from replaceme.loading import load_config, load_tokenizer, local_model_dir

    local = local_model_dir(plan.model) if plan.include else None
    if local is not None:
        config = load_config(str(local), plan.model, plan.trust_remote_code)
        tokenizer = load_tokenizer(str(local), plan.model, config, plan.trust_remote_code)
        check_tokenizers(plan.include, tokenizer, plan.model, trust_remote_code=plan.trust_remote_code)


def _run(plan: ComparePlan, resolved: dict[str, Any], store: RowStore, create: Callable[[], None],
         use_cache: bool) -> Comparison:
    """Load the model, share one calibration pass, then the pending rows: methods,
    included models and the baseline; rows are saved as they finish."""
    from replaceme import distributed
    from replaceme.loading import load_model
    from replaceme.pipeline import check_layers
    from replaceme.registry import adapter_for

    # torchrun: rank 0 alone writes; its errors stop every rank
    loading = dataclasses.replace(plan.loading, device=distributed.join(plan.device))
    offloaded = None
    if plan.offload:
        from replaceme.offload import load_offloaded

        offloaded, tokenizer = load_offloaded(plan.model, **loading.to_dict(), adapter_for=adapter_for,
                                              disk_budget=plan.disk_budget)
        model, fingerprint = offloaded.model, offloaded.fingerprint()
    else:
        model, tokenizer = load_model(plan.model, **loading.to_dict())
        fingerprint = _loaded_fingerprint(model, plan.model)
    adapter = adapter_for(model)
    num_layers = adapter.num_layers(model)
    for n in plan.layers:
        check_layers(n, num_layers)
    check_tokenizers(plan.include, tokenizer, plan.model, trust_remote_code=plan.trust_remote_code)
    schedule = Schedule.build(plan, fingerprint)
    # created only now: the plan, the inputs and the model are good
    distributed.on_root(create)  # the store's directory (see RowStore.open)
    rows = store.finished(schedule.keys)
    pending = schedule.pending(rows)
    methods = [s for s in pending if s.kind == METHOD]
    provenance: dict[str, Any] = {"plan": plan.to_dict(), "options": {label: r.options() for label, r in resolved.items()},
                                  "stages": {label: r.stages() for label, r in resolved.items()},
                                  "layers_before": num_layers, **_environment()}
    prepared = _shared_pass(model, tokenizer, adapter, plan, resolved, methods, use_cache, provenance, store, offloaded)
    heal = _healing(plan.heal_data, plan.seed, plan.model)

    def finish() -> Comparison:
        table = schedule.table(rows)
        written = store.export(table, provenance)
        store.finish()
        return Comparison(table, provenance, written)

    for i, slot in enumerate(pending, 1):
        log.info("[%d/%d] %s, %d layer(s) removed", i, len(pending), slot.label, slot.layers)
        if slot.kind == METHOD:
            def free_statistics(later: list[Slot] = pending[i:]) -> None:
                _keep_for_later(prepared, later, resolved, num_layers)

            row = _method_row(model, tokenizer, adapter, resolved[slot.label], slot, prepared, plan.evaluation,
                              plan.seed, heal, offloaded, before_evaluation=free_statistics)
            free_statistics()  # also when the row failed before its evaluation
        elif slot.kind == BASELINE:  # last, in place: evaluation may cast the model
            row = _baseline_row(model, tokenizer, slot, plan.evaluation, num_layers, offloaded)
        else:
            entry = next(e for e in plan.include if e.label == slot.label)
            row = evaluate_included(entry, slot.key, tokenizer, plan.evaluation, num_layers, device=plan.device,
                                    dtype=plan.dtype, trust_remote_code=plan.trust_remote_code, offload=plan.offload)
        rows[slot.key] = row
        store.save(row)
        if slot.kind != BASELINE:
            finish()
    return finish()


def _keep_for_later(prepared: Any, later: list[Slot], resolved: dict[str, Any], num_layers: int) -> None:
    """After a row, free the statistics no later row reads (float64 Gram sums of blocks no
    later method solves, sample tensors of boundaries no later method fits on)."""
    from replaceme.passes import remaining_request
    from replaceme.pipeline import Run

    if prepared is None:
        return
    runs = [Run(resolved[s.label], s.layers, s.label) for s in later if s.kind == METHOD]
    request = remaining_request(prepared.stats, runs, num_layers)
    if request is not None:
        prepared.stats.keep_only(request)
        _release()


def _loaded_fingerprint(model: Any, source: str) -> str:
    """The row keys' fingerprint of a model ``compare`` loaded from ``source``: its checkpoint
    files' (:func:`~replaceme.model_files.checkpoint_fingerprint`, as with ``--offload``), or
    a digest of every parameter where no local safetensors checkpoint is found."""
    from pathlib import Path

    from replaceme.loading import resolve_model_path
    from replaceme.model_files import checkpoint_fingerprint, checkpoint_layout
    from replaceme.stats.cache import model_fingerprint

    folder = Path(resolve_model_path(source))
    layout = checkpoint_layout(folder) if folder.is_dir() else None
    if not layout:
        return model_fingerprint(model)
    return checkpoint_fingerprint([e.file for e in layout.values()], model.config.to_json_string(use_diff=False))


def _environment() -> dict[str, Any]:
    from replaceme.provenance import device_info, project, versions

    return {"project": project(), "versions": versions(), "device": device_info()}


def _release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _shared_pass(model, tokenizer, adapter, plan: ComparePlan, resolved: dict[str, Any], methods: list[Slot],
                 use_cache: bool, provenance: dict[str, Any], store: RowStore, offloaded: Any = None) -> Any:
    """One calibration pass and every pending method's plan (through :func:`replaceme.pipeline.prepare`);
    the distance tables of every block size up to the largest budget + 1 come along for distances.csv.
    With no method left, nothing is computed (None)."""
    import torch

    from replaceme import distributed
    from replaceme.pipeline import Run, prepare
    from replaceme.stats.request import StatsRequest

    if not methods:
        distributed.skip_pass()  # torchrun: the other ranks have nothing to share and end here
        return None
    torch.manual_seed(plan.seed)
    num_layers = adapter.num_layers(model)
    extra = StatsRequest(block_sizes=set(range(1, min(max(plan.layers) + 1, num_layers - 1) + 1)))
    runs = [Run(resolved[s.label], s.layers, s.label) for s in methods]
    prepared = prepare(model, adapter, runs, plan.calibration, tokenizer, extra=extra, use_cache=use_cache,
                       seed=plan.seed, strict=False, offloaded=offloaded, memory=plan.memory)
    stats, usage = prepared.stats, prepared.usage.get("statistics")
    if usage is not None:
        provenance["statistics"] = {"seconds": usage.seconds, "peak_rss_mb": usage.peak_rss / 2**20,
                                    "tokens": stats.tokens, "sequences": stats.sequences,
                                    "memory_bytes": stats.memory_bytes(), "request": prepared.request.to_dict(),
                                    "statistics_memory": prepared.memory}
    if store.out is not None:
        _write_distances(stats, max(plan.layers), store.out)
    return prepared


def _method_row(model, tokenizer, adapter, method: Any, slot: Slot, prepared: Any, evaluation: Any, seed: int,
                heal: Callable[..., tuple[Any, Any]], offloaded: Any = None,
                before_evaluation: Callable[[], None] = lambda: None) -> Row:
    """Prune a variant of ``model`` (sharing every tensor its merge does not write) with one
    method (row ``slot``), heal it if the row has a healer (the shared, untouched weights are
    the teacher), and evaluate it; any exception is the row's error. A merger or healer that
    wrote into the shared weights stops the comparison, since later rows would start from them.
    With ``offloaded`` the variant holds only its changed layers beside the skeleton and is
    evaluated layer by layer. ``before_evaluation`` runs once the variant is made (``compare``
    frees there the statistics no later row reads, before the evaluation's own peak)."""
    from replaceme.evaluation import evaluate
    from replaceme.pipeline import apply_method, one_line
    from replaceme.resources import Meter
    from replaceme.variant import VARIANT, OffloadedVariantTarget, VersionGuard

    label, n = slot.label, slot.layers
    row = Row(label=label, method=method.method.name, layers=n, key=slot.key)
    if (label, n) in prepared.errors:
        row.error = prepared.errors[(label, n)]
        log.error("%s at %d layers failed: %s", label, n, row.error)
        return row
    pruned = outcome = None
    guard = VersionGuard(model)
    try:
        with Meter() as meter:
            target = VARIANT if offloaded is None else OffloadedVariantTarget(offloaded)
            outcome = apply_method(model, adapter, method, n, prepared.stats, seed=seed, target=target,
                                   device=None if offloaded is None else offloaded.device)
            pruned = outcome.model
            if method.healer is not None:
                pruned, record = heal(model, tokenizer, adapter, method, outcome, prepared)
                row.heal_seconds, row.details["healing"] = record.seconds, record.to_dict()
            before_evaluation()
            t0 = time.perf_counter()
            result = evaluate(pruned, tokenizer, evaluation, offloaded=offloaded)
            row.eval_seconds = time.perf_counter() - t0
        row.blocks = " ".join(str(b) for b in outcome.plan.blocks)
        row.record(result)
        row.prune_seconds = sum(outcome.usage[s].seconds for s in ("select", "compensate", "merge"))
        row.params = sum(p.numel() for p in pruned.parameters())
        row.num_layers = outcome.layers_after
        row.details["outcome"] = outcome.to_dict()
        row.peak_rss_mb, row.peak_cuda_mb = meter.usage.peak_rss / 2**20, _mb(meter.usage.peak_cuda)
    except Exception as exc:  # a plugin may raise anything: it fails its own row only
        row.error = one_line(exc)
        log.error("%s at %d layers failed: %s", label, n, row.error)
        log.debug("traceback", exc_info=True)
    finally:
        del pruned, outcome
        _release()
    written = guard.modified()
    if written:
        raise ReplacemeError(
            f"method '{label}' wrote into the shared model's weights ({', '.join(written[:3])}"
            f"{', ...' if len(written) > 3 else ''}); its merger must declare the layers it writes "
            "(Merger.modifies), and the comparison stops since later rows would start from modified weights"
        )
    return row


def _healing(heal_data: dict[str, Any] | None, seed: int, source: str) -> Callable[..., tuple[Any, Any]]:
    """How a row's variant is healed (for a method with a healer): distilling from the shared
    weights (never written) on ``heal_data`` (default: the calibration records)."""

    def heal(model, tokenizer, adapter, method: Any, outcome: Any, prepared: Any) -> tuple[Any, Any]:
        from replaceme.healer import HealData
        from replaceme.healing.run import heal_outcome

        data = HealData(**heal_data) if heal_data else None
        return heal_outcome(model, adapter, method, outcome, tokenizer, data, calibration=prepared.calibration,
                            request=prepared.request, seed=seed, source=source)

    return heal


def _baseline_row(model, tokenizer, slot: Slot, evaluation: Any, num_layers: int, offloaded: Any = None) -> Row:
    from replaceme.evaluation import evaluate
    from replaceme.resources import Meter

    log.info("baseline (unpruned)")
    with Meter() as meter:
        result = evaluate(model, tokenizer, evaluation, offloaded=offloaded)
    row = Row(label=BASELINE, method=BASELINE, layers=0, key=slot.key, eval_seconds=meter.usage.seconds,
              peak_rss_mb=meter.usage.peak_rss / 2**20, peak_cuda_mb=_mb(meter.usage.peak_cuda),
              params=sum(p.numel() for p in model.parameters()), num_layers=num_layers)
    row.record(result)
    return row


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def _write_distances(stats: Any, max_size: int, out: Path) -> None:
    from replaceme.distances import distance_frame
    from replaceme.outputs import recording, write_text_atomic
    from replaceme.plots import distance_heatmap

    sizes = [n for n in range(1, max_size + 1) if n in stats.angular]
    if not sizes:
        return
    frame = distance_frame(stats, max(sizes))
    with recording(out, out / "distances.csv", out / "distances.png"):
        write_text_atomic(out / "distances.csv", frame.to_csv(index=False))
        distance_heatmap(frame, out / "distances.png")
