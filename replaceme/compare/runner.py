"""Run a comparison: one model load, one calibration pass, one evaluation spec for
all, rows saved as they finish. Each method prunes a variant of the loaded model
(:mod:`replaceme.variant`) that shares every tensor its merge does not write, so
memory stays about one model whatever the number of methods."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replaceme.compare.external import check_tokenizers, evaluate_included
from replaceme.compare.plan import ComparePlan
from replaceme.compare.results import BASELINE, Row, write_exports
from replaceme.data.texts import TextSource
from replaceme.errors import ReplacemeError

if TYPE_CHECKING:
    from replaceme.stats.store import ActivationStats

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


@dataclass
class Comparison:
    """The outcome: rows in table order, provenance, and whether any row failed."""

    rows: list[Row]
    provenance: dict[str, Any] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.error]


def _shared_hash(plan: ComparePlan) -> str:
    """Identity of what all rows share (model, calibration, evaluation, seed)."""
    shared = {k: v for k, v in plan.to_dict().items() if k not in ("methods", "layers", "include")}
    return hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:20]


#: what a comparison writes in its output directory (glob patterns); its ownership record
#: lists them, so that ``--overwrite`` may later replace the directory. Extend it when
#: compare writes something new there.
COMPARE_FILES = ["manifest.json", "rows/*.json", "results.*", "*.png", "distances.csv"]


def check_comparison_output(out: Path, plan: ComparePlan, overwrite: bool) -> bool:
    """Before any work: may ``out`` hold this comparison? Returns True to resume it.

    An existing directory is resumed when it is a comparison of the same model,
    calibration and evaluation; another replaceme comparison needs ``overwrite``;
    anything replaceme did not write is refused (see :func:`replaceme.outputs.check_output`).
    Nothing is created.
    """
    from replaceme.outputs import check_output

    inputs = [plan.model, plan.calibration.text_source.base, *(TextSource(p).base for p in plan.evaluation.ppl),
              *(e.path for e in plan.include)]
    status = check_output(out, inputs=inputs, overwrite=overwrite, allow_existing=True, owner_kind="comparison")
    if not status.exists or status.empty:
        return False
    same = _read_manifest(out).get("shared_hash") == _shared_hash(plan)
    if not same and not overwrite:
        raise ReplacemeError(f"output directory {out} holds other results (use --overwrite to replace them)")
    return same


def _read_manifest(out: Path) -> dict[str, Any]:
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def prepare_output(out: Path, plan: ComparePlan, overwrite: bool) -> None:
    """Create ``out``, or resume (or extend with more methods/budgets) a comparison of
    the same model, calibration and evaluation in it; another comparison there is
    replaced only with ``overwrite``; anything else is refused."""
    from replaceme.outputs import discard_directory, ordinary_permissions, ownership_record, write_json_atomic

    resume = check_comparison_output(out, plan, overwrite)
    if out.exists() and any(out.iterdir()) and not resume:
        discard_directory(out)
    created = not out.exists()
    (out / "rows").mkdir(parents=True, exist_ok=True)
    if created:
        ordinary_permissions(out)
    write_json_atomic(out / MANIFEST, {"shared_hash": _shared_hash(plan), "plan": plan.to_dict(),
                                        **ownership_record("comparison", COMPARE_FILES)})


def _load_row(out: Path | None, key: str) -> Row | None:
    if out is None:
        return None
    path = out / "rows" / f"{key}.json"
    if not path.exists():
        return None
    try:
        return Row.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        log.warning("ignoring unreadable row %s: %s", path, exc)
        return None


def _save_row(out: Path | None, row: Row) -> None:
    if out is not None:
        from replaceme.outputs import write_json_atomic

        write_json_atomic(out / "rows" / f"{row.key}.json", row.to_dict())


def _release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_comparison(plan: ComparePlan, output: Path | None = None, *, overwrite: bool = False, use_cache: bool = True) -> Comparison:
    """Run ``plan``; with ``output``, rows are saved as they finish and reused on a re-run.

    Any exception a method raises (refusal, selection, compensation, merge,
    evaluation) becomes that row's error and the others go on; a
    failed row is saved as failed and retried by the next run. Everything that
    can be checked (methods and options, model, device, data, tasks, the output
    directory) is checked before the model is loaded, and ``output`` is created
    only once the model has loaded.
    """
    from replaceme.methods import resolve_method
    from replaceme.outputs import output_lock

    resolved = {m.label: resolve_method(m.name, m.options, selector=m.selector, compensator=m.compensator) for m in plan.methods}
    check_comparison_inputs(plan)
    if output is None:
        return _run(plan, resolved, None, overwrite, use_cache)
    check_comparison_output(output, plan, overwrite)
    from replaceme.distributed import world

    with output_lock(output) if world().is_root else contextlib.nullcontext():  # rank 0 alone writes
        return _run(plan, resolved, output, overwrite, use_cache)


def check_comparison_inputs(plan: ComparePlan) -> None:
    """The model, device, calibration text, perplexity text and task names, before any work."""
    from replaceme.checks import check_evaluation_inputs, check_model_inputs, check_text_input

    check_model_inputs(plan.model, plan.device)
    for entry in plan.include:
        check_model_inputs(entry.path)
    check_text_input(plan.calibration.text_source, "--calib")
    check_evaluation_inputs(plan.evaluation)


def _run(plan: ComparePlan, resolved: dict[str, Any], output: Path | None, overwrite: bool, use_cache: bool) -> Comparison:
    """Load the model, share one calibration pass, then one row per method and budget,
    included models and the baseline; rows are saved as they finish."""
    from replaceme import distributed
    from replaceme.loading import load_model
    from replaceme.pipeline import check_layers
    from replaceme.registry import adapter_for

    device = distributed.device_name(plan.device)
    if distributed.world().active:  # torchrun: rank 0 alone writes; its errors stop every rank
        from replaceme.loading import resolve_device

        distributed.init(resolve_device(device))
    model, tokenizer = load_model(plan.model, device=device, dtype=plan.dtype, trust_remote_code=plan.trust_remote_code)
    adapter = adapter_for(model)
    num_layers = adapter.num_layers(model)
    for n in plan.layers:
        check_layers(n, num_layers)
    check_tokenizers(plan.include, tokenizer, plan.model, trust_remote_code=plan.trust_remote_code)
    if output is not None:  # created only now: the plan, the inputs and the model are good
        distributed.on_root(lambda: prepare_output(output, plan, overwrite))

    included = {e.label: e for e in plan.include}
    order = [(BASELINE, 0)] + [(m.label, n) for n in plan.layers for m in plan.methods] + [(e, 0) for e in included]
    rows = _finished_rows(plan, output, order)
    pending = [(label, n) for label, n in order if (label, n) not in rows and label != BASELINE and label not in included]
    provenance: dict[str, Any] = {"plan": plan.to_dict(), "options": {label: r.options() for label, r in resolved.items()},
                                  "layers_before": num_layers, **_environment()}
    if not pending:
        distributed.leave()  # torchrun: ranks > 0 end here (the shared pass does it otherwise)
    prepared = _shared_pass(model, tokenizer, adapter, plan, resolved, pending, use_cache, provenance, output) if pending else None

    def finish() -> Comparison:
        table_rows = [rows[k] for k in order if k in rows]
        written = write_exports(table_rows, output, provenance) if output is not None else []
        return Comparison(table_rows, provenance, written)

    for i, (label, n) in enumerate(pending, 1):
        log.info("[%d/%d] %s, %d layer(s) removed", i, len(pending), label, n)
        rows[(label, n)] = _method_row(model, tokenizer, adapter, plan, label, resolved[label], n, prepared)
        _save_row(output, rows[(label, n)])
        finish()
    for label, entry in included.items():
        if (label, 0) not in rows:
            log.info("included model %s: %s", label, entry.path)
            rows[(label, 0)] = evaluate_included(
                entry, plan.row_key(label, 0), tokenizer, plan.evaluation, num_layers,
                device=plan.device, dtype=plan.dtype, trust_remote_code=plan.trust_remote_code)
            _save_row(output, rows[(label, 0)])
            finish()
    if (BASELINE, 0) not in rows:  # last, in place: evaluation may cast the model
        rows[(BASELINE, 0)] = _baseline_row(model, tokenizer, plan, num_layers)
        _save_row(output, rows[(BASELINE, 0)])
    return finish()


def _environment() -> dict[str, Any]:
    from replaceme.provenance import device_info, versions

    return {"versions": versions(), "device": device_info()}


def _finished_rows(plan: ComparePlan, output: Path | None, order: list[tuple[str, int]]) -> dict[tuple[str, int], Row]:
    """Rows saved by an earlier run of the same comparison (resume)."""
    rows = {}
    for label, n in order:
        done = _load_row(output, plan.row_key(label, n))
        if done is not None and not done.error:  # a failed row is retried
            rows[(label, n)] = done
    if rows:
        log.info("resuming: %d of %d rows already done", len(rows), len(order))
    return rows


def _shared_pass(model, tokenizer, adapter, plan: ComparePlan, resolved: dict[str, Any], pending: list[tuple[str, int]],
                 use_cache: bool, provenance: dict[str, Any], output: Path | None) -> Any:
    """One calibration pass and every pending run's plan (through :func:`replaceme.pipeline.prepare`);
    the distance tables of every block size up to the largest budget + 1 come along for distances.csv."""
    import torch

    from replaceme.pipeline import Run, prepare
    from replaceme.stats.request import StatsRequest

    torch.manual_seed(plan.seed)
    num_layers = adapter.num_layers(model)
    extra = StatsRequest(block_sizes=set(range(1, min(max(plan.layers) + 1, num_layers - 1) + 1)))
    runs = [Run(resolved[label], n, label) for label, n in pending]
    prepared = prepare(model, adapter, runs, plan.calibration, tokenizer, extra=extra, use_cache=use_cache,
                       seed=plan.seed, strict=False)
    stats, usage = prepared.stats, prepared.usage.get("statistics")
    if usage is not None:
        provenance["statistics"] = {"seconds": usage.seconds, "peak_rss_mb": usage.peak_rss / 2**20,
                                    "tokens": stats.tokens, "sequences": stats.sequences,
                                    "memory_bytes": stats.memory_bytes(), "request": prepared.request.to_dict()}
    if output is not None:
        _write_distances(stats, max(plan.layers), output)
    return prepared


def _method_row(model, tokenizer, adapter, plan: ComparePlan, label: str, method: Any, n: int, prepared: Any) -> Row:
    """Prune a variant of ``model`` (sharing every tensor its merge does not write) with one
    method (row ``label``) and evaluate it; any exception is the row's error. A merger that
    wrote into the shared weights stops the comparison, since later rows would start from them."""
    from replaceme.evaluation import evaluate
    from replaceme.pipeline import apply_method, one_line
    from replaceme.resources import Meter
    from replaceme.variant import VersionGuard

    row = Row(label=label, method=method.method.name, layers=n, key=plan.row_key(label, n))
    if (label, n) in prepared.errors:
        row.error = prepared.errors[(label, n)]
        log.error("%s at %d layers failed: %s", label, n, row.error)
        return row
    pruned = outcome = None
    guard = VersionGuard(model)
    try:
        with Meter() as meter:
            outcome = apply_method(model, adapter, method, n, prepared.stats, seed=plan.seed, variant=True)
            pruned = outcome.model
            t0 = time.perf_counter()
            result = evaluate(pruned, tokenizer, plan.evaluation)
            row.eval_seconds = time.perf_counter() - t0
        row.blocks = " ".join(str(b) for b in outcome.plan.blocks)
        row.record(result)
        row.prune_seconds = sum(outcome.usage[s].seconds for s in ("select", "compensate", "merge"))
        row.params = sum(p.numel() for p in pruned.parameters())
        row.num_layers = outcome.layers_after
        row.details = {"outcome": outcome.to_dict()}
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


def _baseline_row(model, tokenizer, plan: ComparePlan, num_layers: int) -> Row:
    from replaceme.evaluation import evaluate
    from replaceme.resources import Meter

    log.info("baseline (unpruned)")
    with Meter() as meter:
        result = evaluate(model, tokenizer, plan.evaluation)
    row = Row(label=BASELINE, method=BASELINE, layers=0, key=plan.row_key(BASELINE, 0),
              eval_seconds=meter.usage.seconds, peak_rss_mb=meter.usage.peak_rss / 2**20,
              peak_cuda_mb=_mb(meter.usage.peak_cuda), params=sum(p.numel() for p in model.parameters()),
              num_layers=num_layers)
    row.record(result)
    return row


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def _write_distances(stats: ActivationStats, max_size: int, out: Path) -> None:
    from replaceme.distances import distance_frame
    from replaceme.outputs import write_text_atomic
    from replaceme.plots import distance_heatmap

    sizes = [n for n in range(1, max_size + 1) if n in stats.angular]
    if not sizes:
        return
    frame = distance_frame(stats, max(sizes))
    write_text_atomic(out / "distances.csv", frame.to_csv(index=False))
    distance_heatmap(frame, out / "distances.png")
