"""The Python API: ``replaceme.prune`` and ``replaceme.save_pruned``."""

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
    calib_4bit: bool = False
    base_model: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)
    holdout: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"
    healing: dict[str, Any] | None = None

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
    heal: str | None = None,
    heal_data: Any = None,
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
            takes them above 1 GiB of one-pass statistics (:mod:`replaceme.passes`).
        heal: a healer that trains the pruned model back, distilling from the unpruned one by
            default (``"none"``: off even if the recipe names one); options ``heal.KEY``.
        heal_data: the healing text (:class:`replaceme.healer.HealData` or a source string as
            for calibration); default: the calibration records the compensation was fit on.
        **method_options: shorthand for ``options`` where the name is unambiguous
            (``prune(..., alpha=1e-3)``); a key given both ways is an error.

    Under ``torchrun`` the calibration pass is split over the processes
    (:mod:`replaceme.distributed`); rank 0 returns the result, and the other ranks
    return ``None`` once their share of the pass is delivered (they write nothing).

    Returns:
        A :class:`PruneResult` with the pruned model, the plan and the timings;
        ``None`` on a ``torchrun`` rank other than 0.
    """
    import torch

    from replaceme import distributed
    from replaceme.checks import check_layer_budget
    from replaceme.hub_ids import base_model_id
    from replaceme.loading import load_model
    from replaceme.methods import resolve_method
    from replaceme.pipeline import Run, apply_method, prepare
    from replaceme.registry import adapter_for
    from replaceme.resources import Meter

    check_layer_budget(layers, str(model_or_path) if isinstance(model_or_path, (str, Path)) else None)
    resolved = resolve_method(method, _merge_options(options, method_options), selector=selector, compensator=compensator,
                              strict=strict, healer=heal)
    hub_id = base_model_id(str(model_or_path), base_model) if isinstance(model_or_path, (str, Path)) else base_model
    if resolved.healer is None and heal_data is not None and getattr(heal_data, "source", heal_data) is not None:
        raise ReplacemeError("healing data was given but no healer (--heal NAME)")
    if resolved.healer is not None and offload:
        raise ReplacemeError("healing needs the whole model in memory: it cannot be combined with offload")
    if gram_device is not None:
        from replaceme.loading import resolve_device

        gram_device = resolve_device(gram_device, option="--gram-device")
    if spill_dir is not None and isinstance(model_or_path, (str, Path)):  # temporaries never go into an input
        from replaceme.outputs import check_work_dirs

        calib_source = getattr(getattr(calibration, "text_source", None), "base", calibration)
        check_work_dirs([model_or_path, calib_source], spill_dir=spill_dir, cache=use_cache)
    if calib_4bit:
        from replaceme.loading import check_4bit

        if offload or not isinstance(model_or_path, (str, Path)):
            raise ReplacemeError("calib_4bit needs a model path and cannot be combined with offload")
        check_4bit(device)
    if offload:
        from replaceme.offload.budget import parse_size

        resolved.check_offload()
        disk_budget = parse_size(disk_budget)
    device = distributed.device_name(device)  # under torchrun: this process's GPU
    model, tokenizer, source, offloaded, usage = _load(model_or_path, tokenizer, device, dtype, trust_remote_code,
                                                       offload, calib_4bit, disk_budget)
    adapter = adapter_for(model)
    torch.manual_seed(seed)
    if resolved.healer is not None:  # under torchrun every process stays after the pass: all heal (DDP)
        ddp.keep(device)
    prepared = prepare(model, adapter, [Run(resolved, layers)], calibration, tokenizer, use_cache=use_cache, seed=seed,
                       offloaded=offloaded, spill_dir=spill_dir, gram_device=gram_device, passes=str(stats_passes))
    usage.update(prepared.usage)
    if calib_4bit:  # statistics came from the 4-bit copy; prune the full-precision weights
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        with Meter() as m:
            model, _ = load_model(source, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        usage["load_full_precision"] = m.usage
    if offloaded is not None:
        from replaceme.variant import OnDemandTarget

        outcome = apply_method(model, adapter, resolved, layers, prepared.stats, seed=seed, device=offloaded.device,
                               target=OnDemandTarget(offloaded))
    elif resolved.healer is not None:  # a variant is healed: the unpruned model is the teacher
        from replaceme.healing.run import prune_and_heal

        outcome, record = prune_and_heal(model, adapter, resolved, layers, prepared, tokenizer, heal_data, seed=seed,
                                         source=source)
        model, outcome.usage["heal"] = outcome.model, record.usage
    else:
        outcome = apply_method(model, adapter, resolved, layers, prepared.stats, seed=seed)
    usage.update(outcome.usage)
    return PruneResult(
        model=model,
        tokenizer=tokenizer,
        method=resolved.label,
        layers=layers,
        outcome=outcome,
        calibration=prepared.calibration,
        usage=usage,
        options=resolved.options(),
        seed=seed,
        source=source,
        offloaded=offloaded,
        stats_memory=prepared.memory,
        calib_4bit=calib_4bit,
        base_model=hub_id,
        recipe=resolved.recipe(),
        stages=resolved.stages(),
        holdout=_holdout(prepared.stats),
        dtype=dtype,
        healing=record.to_dict() if resolved.healer is not None else None,
    )


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


def _load(model_or_path: Any, tokenizer: Any, device: str, dtype: str, trust_remote_code: bool, offload: bool,
          calib_4bit: bool, disk_budget: int | None = None):
    """Load a model path (a 4-bit copy for the pass, or an offloaded skeleton), or take a
    model object: ``(model, tokenizer, source, offloaded, usage)``."""
    from replaceme.loading import load_model
    from replaceme.resources import Meter

    source = None
    offloaded = None
    with Meter() as m:
        if calib_4bit:  # the full-precision model is loaded after the pass
            from replaceme.loading import load_model_4bit

            source = str(model_or_path)
            model, tokenizer = load_model_4bit(source, device=device, dtype=dtype,
                                               trust_remote_code=trust_remote_code)
        elif offload:
            from replaceme.offload import load_offloaded
            from replaceme.registry import adapter_for

            if not isinstance(model_or_path, (str, Path)):
                raise ReplacemeError("offload=True needs a model directory, not a loaded model")
            source = str(model_or_path)
            offloaded, tokenizer = load_offloaded(source, device=device, dtype=dtype,
                                                  trust_remote_code=trust_remote_code, adapter_for=adapter_for,
                                                  disk_budget=disk_budget)
            model = offloaded.model
        elif isinstance(model_or_path, (str, Path)):
            source = str(model_or_path)
            model, tokenizer = load_model(source, device=device, dtype=dtype,
                                          trust_remote_code=trust_remote_code)
        else:
            model = model_or_path
            if tokenizer is None:
                raise ReplacemeError("pass tokenizer= when pruning a model object")
            model.eval()
    return model, tokenizer, source, offloaded, {"load": m.usage}


#: files of a source model directory that belong to its tokenizer (copied when save_pretrained did not write them)
TOKENIZER_FILES = ("tokenizer*", "*.model", "vocab.*", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                   "chat_template*", "*.tiktoken", "spiece*", "sentencepiece*")


def copy_tokenizer_files(source: str | Path | None, target: Path) -> list[str]:
    """Copy every tokenizer file of a local ``source`` directory missing from ``target``."""
    import fnmatch
    import shutil

    if source is None or not Path(source).expanduser().is_dir():
        return []
    copied = []
    for path in sorted(Path(source).expanduser().iterdir()):
        if path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in TOKENIZER_FILES) and not (target / path.name).exists():
            shutil.copyfile(path, target / path.name)
            copied.append(path.name)
    return copied


def save_pruned(result: PruneResult, output: str | Path, *, overwrite: bool = False, extra: dict[str, Any] | None = None,
                save_transforms: bool = False) -> Path:
    """Write the pruned model as a standard model directory plus ``pruning.json`` and a
    model card (``README.md``, see :mod:`replaceme.model_card`); with ``save_transforms``
    also the estimated maps and removed blocks as ``transforms.safetensors``
    (layout in :mod:`replaceme.transforms`).

    The directory appears only once complete (written beside it under a name
    unique to the run, then renamed). An existing one is replaced only with
    ``overwrite`` and only when replaceme wrote it (see :mod:`replaceme.outputs`);
    the source model and the calibration file are never written. Tokenizer files
    of the source that ``save_pretrained`` does not write (``tokenizer.model``, ...)
    are copied.
    """
    from replaceme import model_card
    from replaceme.loading import local_model_dir
    from replaceme.outputs import atomic_directory, write_json_atomic

    output = Path(output).expanduser()
    source_dir = local_model_dir(result.source) if result.source else None
    inputs = [source_dir, result.calibration.text_source.base if result.calibration else None]
    with atomic_directory(output, overwrite=overwrite, inputs=inputs, marker=("pruning.json", "pruned-model")) as tmp:
        if result.offloaded is not None:
            result.offloaded.save(tmp)
        else:
            result.model.save_pretrained(tmp, safe_serialization=True)
        if result.tokenizer is not None:
            result.tokenizer.save_pretrained(tmp)
        copy_tokenizer_files(source_dir, tmp)
        if save_transforms:
            from replaceme.transforms import TRANSFORMS_FILE, write_transforms

            write_transforms(tmp, result.plan.blocks, result.outcome.compensations)
        meta = {**result.metadata(), **(extra or {})}
        if save_transforms:
            meta["transforms_file"] = TRANSFORMS_FILE
        meta.setdefault("source_license", model_card.source_license(result.source))
        meta.setdefault("output", str(output))
        meta.setdefault("output_name", output.name)
        write_json_atomic(tmp / "pruning.json", meta)
        model_card.write(tmp, meta)
    return output
