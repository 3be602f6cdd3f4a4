"""The Python API: ``replaceme.prune`` (and ``replaceme.save_pruned``, from :mod:`replaceme.saving`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replaceme.calibration import CalibrationSpec
from replaceme.distributed import ddp, root_result
from replaceme.errors import ReplacemeError
from replaceme.pipeline import MethodOutcome
from replaceme.resources import Usage
from replaceme.saving import TOKENIZER_FILES, copy_tokenizer_files, save_pruned  # noqa: F401 (the API's save step)
from replaceme.settings import LoadSettings, MemorySettings

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    """A pruned model and how it was made.

    Attributes:
        model: the pruned model (a standard Hugging Face model).
        tokenizer: its tokenizer.
        method: the method label.
        layers: net decoder layers removed.
        outcome: plan, compensations and per-stage usage.
        calibration: the calibration spec (None when stats were given).
        usage: ``load``/``calibration``/``statistics``/``select``/... -> Usage.
        options: every option in effect, by component.
        seed: the run's seed.
        offloaded: with ``offload``, the skeleton over its checkpoint (saving streams it).
        stats_memory: bytes of Gram sums and activation sample, and whether the
            sample was on disk (recorded in ``pruning.json``).
        base_model: the Hub id of the source (:mod:`replaceme.hub_ids`), None when it has none.
        recipe: how the method was asked for (:meth:`ResolvedMethod.recipe`).
        stages: each stage's component and the distribution that provides it.
        holdout: the calibration actually held out of every fit (batches, tokens, fraction of tokens).
        dtype: the ``dtype`` asked for.
        loading, memory: the run's settings groups (:mod:`replaceme.settings`).
        healing: with a healer, what healing did (:class:`replaceme.healing.stage.HealRecord`
            as a dict: healer, options, data, tokens seen, loss curve, time, memory).
    """

    model: Any
    tokenizer: Any
    method: str
    layers: int
    outcome: MethodOutcome
    calibration: CalibrationSpec | None
    usage: dict[str, Usage] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    source: str | None = None
    offloaded: Any = None
    stats_memory: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)
    holdout: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"
    healing: dict[str, Any] | None = None
    loading: LoadSettings = field(default_factory=LoadSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)

    @property
    def calib_4bit(self) -> bool:
        return self.memory.calib_4bit

    @property
    def plan(self):
        return self.outcome.plan

    @property
    def timings(self) -> dict[str, float]:
        return {k: u.seconds for k, u in self.usage.items()}

    def metadata(self) -> dict[str, Any]:
        """The content of ``pruning.json``."""
        from replaceme.provenance import project, versions

        return {
            "method": self.method,
            "source_model": self.source,
            "base_model": self.base_model,
            "layers_removed": self.layers,
            **self.outcome.to_dict(),
            "recipe": self.recipe,
            "options": self.options,
            "stages": self.stages,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "holdout": self.holdout,
            "dtype": self.dtype,
            "seed": self.seed,
            "project": project(),
            "versions": versions(),
            "usage": {k: u.to_dict() for k, u in self.usage.items()},
            "statistics_memory": self.stats_memory,
            "calibration_4bit": self.calib_4bit,
            "healing": self.healing,
            "offload": self.offloaded.describe() if self.offloaded is not None else {"enabled": False},
            "settings": {"loading": self.loading.to_dict(), "memory": self.memory.to_dict(),
                         "calibration": self.calibration.to_dict() if self.calibration else None},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


@root_result
def prune(
    model_or_path: Any,
    method: str = "replaceme-lstsq",
    layers: int = 1,
    calibration: CalibrationSpec | str | None = None,
    *,
    options: dict[str, Any] | None = None,
    tokenizer: Any = None,
    selector: str | None = None,
    compensator: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    use_cache: bool = True,
    trust_remote_code: bool = False,
    offload: bool = False,
    disk_budget: int | str | None = None,
    spill_dir: str | Path | None = None,
    calib_4bit: bool = False,
    gram_device: str | None = None,
    base_model: str | None = None,
    strict: bool = False,
    stats_passes: str = "auto",
    memory_budget: int | str | None = "auto",
    heal: str | None = None,
    heal_data: Any = None,
    loading: LoadSettings | None = None,
    memory: MemorySettings | None = None,
    **method_options: Any,
) -> PruneResult | None:
    """Prune ``layers`` decoder layers with ``method``.

    Args:
        model_or_path: a model directory, hub id, ``"demo"``, or a loaded model
            (which is pruned in place; pass a copy to keep the original).
        method: a registered method name (``replaceme methods`` lists them).
        layers: net number of decoder layers removed.
        calibration: a :class:`CalibrationSpec`, or a source string
            (file or hub dataset) used with default settings.
        options: method options (``replaceme methods`` lists them), kept apart
            from this function's own parameters: an option named like one of
            them (``seed``, ``device``, ...) can only be given here.
        tokenizer: required when ``model_or_path`` is a model object.
        selector, compensator: swap a stage of the recipe.
        device, dtype: where and in what precision to run (``auto``: CUDA+bf16 or CPU+fp32).
        seed: seeds calibration shuffling, samples and training.
        use_cache: reuse cached statistics for identical inputs.
        offload: never hold the whole model: read it from its safetensors
            checkpoint one decoder layer at a time (a local directory only; see
            :mod:`replaceme.offload`). ``result.model`` is then a skeleton whose
            untouched parameters are on the meta device; save it with
            :func:`save_pruned`, which streams the checkpoint.
        disk_budget: with ``offload``, most bytes of activations kept on disk between
            layers (``"200G"``, a byte count, or None/``"auto"``: half the free space);
            above it the layers are streamed once per group of batches that fits
            (:mod:`replaceme.offload.budget`).
        spill_dir: keep the activation sample (and, with ``offload``, the
            activations between layers) in memory-mapped files in a run-unique
            directory created under this one, instead of RAM
            (:mod:`replaceme.stats.spill`); lets ``token_budget`` grow past RAM.
        calib_4bit: run the calibration pass on a 4-bit (bitsandbytes NF4) copy of
            the model, as the ReplaceMe reference's ``use_4bit``, then load the
            full-precision model to compensate and merge. Needs a CUDA GPU and
            bitsandbytes. **It changes the statistics**: distances, Gram sums and
            samples are those of the quantised model, so plans and maps differ
            from a full-precision run.
        gram_device: where the float64 Gram sums live during the pass (default:
            the compute device); ``"cpu"`` frees (L − n) · 2 · h² · 8 bytes of GPU
            memory at the cost of host float64 arithmetic.
        base_model: the Hub id the model card names as ``base_model`` (for a local copy of
            a Hub model; by default the source's own id when it is one, see :mod:`replaceme.hub_ids`).
        strict: refuse options that the configuration in effect ignores (otherwise a warning).
        stats_passes: ``auto``, ``"1"`` or ``"2"``: with a distance selector, two passes
            (tables, then what the compensator needs for the chosen blocks only) hold
            far smaller statistics at the cost of a second forward pass; ``auto``
            takes them when one pass would exceed ``memory_budget`` (:mod:`replaceme.passes`).
        memory_budget: most bytes the statistics may hold in RAM (``"2G"``, a byte count, or
            None/``"auto"``: max(256 MiB, a quarter of the weights), at most half the available
            RAM): passes, where the sample lives and its size are planned to fit it, and a run
            that cannot fit is refused before the calibration pass.
        heal: a healer that trains the pruned model back, distilling from the unpruned one by
            default (``"none"``: off even if the recipe names one); options ``heal.KEY``.
        heal_data: the healing text (:class:`replaceme.healer.HealData` or a source string as
            for calibration); default: the calibration records the compensation was fit on.
        loading: ``device``, ``dtype`` and ``trust_remote_code`` as one
            :class:`~replaceme.settings.LoadSettings` (instead of the keywords).
        memory: ``offload``, ``disk_budget``, ``spill_dir``, ``gram_device``, ``calib_4bit``,
            ``stats_passes`` and ``memory_budget`` as one :class:`~replaceme.settings.MemorySettings` (instead of the keywords).
        **method_options: shorthand for ``options`` where the name is unambiguous
            (``prune(..., alpha=1e-3)``); a key given both ways is an error.

    Under ``torchrun`` the calibration pass is split over the processes
    (:mod:`replaceme.distributed`); rank 0 returns the result, and the other ranks
    return ``None`` once their share of the pass is delivered (they write nothing).

    Returns:
        A :class:`PruneResult` with the pruned model, the plan and the timings;
        ``None`` on a ``torchrun`` rank other than 0.
    """
    from replaceme.checks import check_layer_budget
    from replaceme.hub_ids import base_model_id
    from replaceme.methods import resolve_method

    check_layer_budget(layers, str(model_or_path) if isinstance(model_or_path, (str, Path)) else None)
    loading = LoadSettings.merged(loading, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    memory = MemorySettings.merged(memory, offload=offload, spill_dir=spill_dir, gram_device=gram_device,
                                   calib_4bit=calib_4bit, stats_passes=str(stats_passes), disk_budget=disk_budget,
                                   memory_budget=memory_budget)
    resolved = resolve_method(method, _merge_options(options, method_options), selector=selector, compensator=compensator,
                              strict=strict, healer=heal)
    hub_id = base_model_id(str(model_or_path), base_model) if isinstance(model_or_path, (str, Path)) else base_model
    if resolved.healer is None and heal_data is not None and getattr(heal_data, "source", heal_data) is not None:
        raise ReplacemeError("healing data was given but no healer (--heal NAME)")
    return _prune(model_or_path, tokenizer, resolved, layers, calibration, loading, memory, seed=seed,
                  use_cache=use_cache, hub_id=hub_id, heal_data=heal_data)


def _prune(model_or_path: Any, tokenizer: Any, resolved: Any, layers: int, calibration: Any, loading: LoadSettings,
           memory: MemorySettings, *, seed: int, use_cache: bool, hub_id: str | None, heal_data: Any) -> PruneResult:
    """:func:`prune` once its settings are grouped and its method resolved."""
    import dataclasses

    import torch

    from replaceme import distributed
    from replaceme.loading import load_model
    from replaceme.pipeline import Run, apply_method, prepare
    from replaceme.registry import adapter_for
    from replaceme.resources import Meter

    from replaceme.preflight import Intent, preflight

    if memory.spill_dir is not None and isinstance(model_or_path, (str, Path)):  # temporaries never go into an input
        from replaceme.outputs import check_work_dirs

        calib_source = getattr(getattr(calibration, "text_source", None), "base", calibration)
        check_work_dirs([model_or_path, calib_source], spill_dir=memory.spill_dir, cache=use_cache)
    # every refusal the settings, config.json and the registry can decide, before any weights load
    preflight(Intent(model_or_path, runs=[(resolved.label, resolved, layers)], loading=loading, memory=memory,
                     heal_processes=distributed.world().size, calibration=calibration))  # under torchrun every process heals
    disk_budget = None
    if memory.offload:
        from replaceme.offload.budget import parse_size

        disk_budget = parse_size(memory.disk_budget)
    # under torchrun: this process's GPU
    run_loading = dataclasses.replace(loading, device=distributed.device_name(loading.device))
    loaded = _load(model_or_path, tokenizer, run_loading, memory, disk_budget)
    model, tokenizer, offloaded, usage = loaded.model, loaded.tokenizer, loaded.offloaded, loaded.usage
    adapter = adapter_for(model)
    torch.manual_seed(seed)
    if resolved.healer is not None:  # under torchrun every process stays after the pass: all heal (DDP)
        ddp.keep(run_loading.device)
    prepared = prepare(model, adapter, [Run(resolved, layers)], calibration, tokenizer, use_cache=use_cache, seed=seed,
                       offloaded=offloaded, memory=memory)
    usage.update(prepared.usage)
    if memory.calib_4bit:  # statistics came from the 4-bit copy; prune the full-precision weights
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        with Meter() as m:
            model, _ = load_model(loaded.source, **run_loading.to_dict())
        usage["load_full_precision"] = m.usage
    record = None
    if offloaded is not None:
        from replaceme.variant import OnDemandTarget

        outcome = apply_method(model, adapter, resolved, layers, prepared.stats, seed=seed, device=offloaded.device,
                               target=OnDemandTarget(offloaded))
    elif resolved.healer is not None:  # a variant is healed: the unpruned model is the teacher
        from replaceme.healing.run import prune_and_heal

        outcome, record = prune_and_heal(model, adapter, resolved, layers, prepared, tokenizer, heal_data, seed=seed,
                                         source=loaded.source)
        model, outcome.usage["heal"] = outcome.model, record.usage
    else:
        outcome = apply_method(model, adapter, resolved, layers, prepared.stats, seed=seed)
    usage.update(outcome.usage)
    return PruneResult(model=model, tokenizer=tokenizer, method=resolved.label, layers=layers, outcome=outcome,
                       calibration=prepared.calibration, usage=usage, options=resolved.options(), seed=seed,
                       source=loaded.source, offloaded=offloaded, stats_memory=prepared.memory, base_model=hub_id,
                       recipe=resolved.recipe(), stages=resolved.stages(), holdout=_holdout(prepared.stats),
                       dtype=loading.dtype, healing=record.to_dict() if record is not None else None, loading=loading,
                       memory=memory)


def _holdout(stats: Any) -> dict[str, Any]:
    """What the statistics pass held out of every fit: batches, tokens and their fraction of all
    tokens (0 batches where too few were given to hold any out: the pass warned)."""
    batches, tokens = int(getattr(stats, "holdout_batches", 0)), int(getattr(stats, "holdout_tokens", 0))
    total = int(getattr(stats, "tokens", 0) or 0)
    return {"batches": batches, "tokens": tokens, "fraction": tokens / total if total else 0.0}


def _merge_options(options: dict[str, Any] | None, method_options: dict[str, Any]) -> dict[str, Any]:
    """``options=`` plus the keyword shorthand; a key given both ways is ambiguous."""
    both = sorted(set(options or {}) & set(method_options))
    if both:
        raise ReplacemeError(f"option(s) {', '.join(both)} given both in options= and as keywords")
    return {**(options or {}), **method_options}


@dataclass
class Loaded:
    """What :func:`_load` produced: the model (a skeleton with ``offloaded``), its tokenizer,
    the path it came from (None for a model object) and the time and memory it took."""

    model: Any
    tokenizer: Any
    source: str | None = None
    offloaded: Any = None
    usage: dict[str, Usage] = field(default_factory=dict)


def _load(model_or_path: Any, tokenizer: Any, loading: LoadSettings, memory: MemorySettings,
          disk_budget: int | None = None) -> Loaded:
    """Load a model path (a 4-bit copy for the pass, or an offloaded skeleton with its disk
    budget in bytes), or take a model object."""
    from replaceme.loading import load_model
    from replaceme.resources import Meter

    source = None
    offloaded = None
    with Meter() as m:
        if memory.calib_4bit:  # the full-precision model is loaded after the pass
            from replaceme.loading import load_model_4bit

            source = str(model_or_path)
            model, tokenizer = load_model_4bit(source, **loading.to_dict())
        elif memory.offload:
            from replaceme.offload import load_offloaded
            from replaceme.registry import adapter_for

            if not isinstance(model_or_path, (str, Path)):
                raise ReplacemeError("offload=True needs a model directory, not a loaded model")
            source = str(model_or_path)
            offloaded, tokenizer = load_offloaded(source, **loading.to_dict(), adapter_for=adapter_for,
                                                  disk_budget=disk_budget)
            model = offloaded.model
        elif isinstance(model_or_path, (str, Path)):
            source = str(model_or_path)
            model, tokenizer = load_model(source, **loading.to_dict())
        else:
            model = model_or_path
            if tokenizer is None:
                raise ReplacemeError("pass tokenizer= when pruning a model object")
            model.eval()
    return Loaded(model, tokenizer, source, offloaded, {"load": m.usage})


