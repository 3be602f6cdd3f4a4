"""Every refusal that the command line, ``config.json`` and the registry can decide, made
before any model weights load: the one step ``prune``, ``compare``, ``distances`` and
``evaluate`` (and the Python API) run between reading their settings and loading the model.

What a command is about to do is an :class:`Intent`; :func:`preflight` asks every part
that could refuse it later, in this order:

1. the devices (``--device``, ``--gram-device``) exist on this machine, and
   ``--calib-4bit`` has its GPU, its package, and no ``--offload``; the local calibration
   records give what the options ask of them, and every local ``--ppl`` text a window to
   score;
2. with ``--offload``: the model (and every ``--include-model``) is a local safetensors
   checkpoint (headers only), every stage of every method runs layer by layer
   (``Component.check_offload``; a healer never does), and every lm-eval task scores
   log-likelihoods;
3. ``--stats-passes 2`` only with selectors that choose from distance tables;
4. the architecture: the model's :class:`~replaceme.adapters.ModelAdapter` is found from
   ``config.json`` on an empty model (parameters on the ``meta`` device, nothing read), and
   each method is asked, at each budget, whether it can be expressed on it
   (``check_model`` of every stage), whether its options name modules the model has
   (``check_modules``, e.g. LoRA's ``target_modules``), whether the budget fits the layer
   count, and what it would gather (``stats_request``: a selector's candidates refuse what
   cannot fit);
5. ``--memory-budget``: the float64 Gram sums of what the runs gather, in the smallest
   plan, fit it (:func:`replaceme.passes.check_fits_before_loading`).

A new plugin's refusal is covered as soon as it raises from ``check_model``,
``check_modules``, ``check_offload``, ``candidates`` or ``stats_request``. A hub id is
not read before it is downloaded: step 4 then runs on the loaded model (:func:`replaceme.pipeline.prepare`
asks the same questions again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError
from replaceme.settings import LoadSettings, MemorySettings


@dataclass
class Intent:
    """What a command is about to do (see :func:`preflight`).

    Attributes:
        model: a model directory, a registered name (``demo``), a hub id, or a loaded model object.
        runs: ``(label, resolved method, layers)`` for each method at each budget.
        methods: further methods that run no budget of their own (``distances --loss``).
        layers: budgets checked against the layer count with no method (``distances -n``).
        loading, memory: the run's settings (``memory.offload`` is ``--offload``).
        tasks: lm-eval task names (with ``task_data``/``tasks_dir``), refused with ``--offload``
            when they generate text.
        include: paths of ``--include-model`` entries (evaluated the same way as the model).
        extra: ``num_layers -> StatsRequest`` of what the command gathers besides its runs.
        strict: raise the first refusal of a run; else return them (``compare`` keeps going).
        heal_processes: processes that heal together (``prune`` under ``torchrun``: all of them).
        calibration: the :class:`~replaceme.calibration.CalibrationSpec`; a local source's records
            are formatted and batched as the pass will (no tokenizer), so what they cannot give
            (conversations for ``--chat-template on``, a full batch for ``--calib-drop-last``, a
            held-out batch for plans scored on held-out batches alone) is refused.
        scores_on_holdout: the command scores plans on held-out batches alone (``distances
            --loss``; a selector says so itself: ``Selector.needs_holdout``).
        evaluation: the :class:`~replaceme.evaluation.EvalSpec`; every local ``--ppl`` text must
            give a window to score with the model's tokenizer (read from its folder).
    """

    model: Any
    runs: list[tuple[str, Any, int]] = field(default_factory=list)
    methods: list[Any] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    loading: LoadSettings = field(default_factory=LoadSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)
    tasks: list[str] = field(default_factory=list)
    task_data: str | None = None
    tasks_dir: str | None = None
    include: list[str] = field(default_factory=list)
    extra: Callable[[int], Any] | None = None
    strict: bool = True
    heal_processes: int = 1
    calibration: Any = None
    scores_on_holdout: bool = False
    evaluation: Any = None

    @property
    def all_methods(self) -> list[Any]:
        return [method for _, method, _ in self.runs] + list(self.methods)


@dataclass
class Facts:
    """What the empty model tells: its module tree (``model``), adapter, layer count, hidden
    size and parameter count (0 when unknown) with the largest element size it may load in."""

    model: Any
    adapter: Any
    num_layers: int
    hidden_size: int = 0
    weight_bytes: int = 0


def _facts(adapter: Any, model: Any) -> Facts:
    params = {id(p): p for p in model.parameters()}.values()
    size = max([4, *(p.element_size() for p in params)])  # a stored bfloat16 may load as float32
    return Facts(model, adapter, adapter.num_layers(model), int(getattr(model.config, "hidden_size", 0) or 0),
                 sum(p.numel() for p in params) * size)


def preflight(intent: Intent) -> dict[tuple[str, int], str]:
    """Refuse ``intent`` in one line if any part of it cannot run, before any weights load.

    Returns:
        ``(label, layers) -> one-line error`` of the runs refused (only when not ``strict``;
        every other refusal is raised).
    """
    _check_devices(intent)
    _check_calibration(intent)
    _check_perplexity(intent)
    if intent.memory.offload:
        _check_offload(intent)
    for method in intent.all_methods:
        if method.healer is not None:
            from replaceme.healer import check_batch_processes

            check_batch_processes(method.healer.options.batch_size, intent.heal_processes)
    if str(intent.memory.stats_passes) == "2":
        from replaceme.passes import check_two_passes

        check_two_passes([method.selector for _, method, _ in intent.runs])  # what selects, not what only scores
    facts = model_facts(intent.model, intent.loading.trust_remote_code) if _needs_adapter(intent) else None
    return {} if facts is None else _check_architecture(intent, facts)


def _needs_adapter(intent: Intent) -> bool:
    return bool(intent.runs or intent.methods or intent.layers or intent.memory.offload)


def _check_devices(intent: Intent) -> None:
    from replaceme.loading import check_4bit, resolve_device

    device = resolve_device(intent.loading.device)
    if intent.memory.gram_device is not None:
        resolve_device(intent.memory.gram_device, option="--gram-device")
    if intent.memory.calib_4bit:
        if intent.memory.offload or not isinstance(intent.model, (str, Path)):
            raise ReplacemeError("--calib-4bit needs a model path and cannot be combined with --offload")
        check_4bit(device)


def _check_calibration(intent: Intent) -> None:
    from replaceme.calibration import CalibrationSpec, calibration_texts
    from replaceme.stats.collect import holdout_batch_count

    spec = intent.calibration
    if not isinstance(spec, CalibrationSpec) or not spec.text_source.is_local:
        return
    batches = -(-len(calibration_texts(spec, warn=False)) // spec.batch_size)
    holds_out = holdout_batch_count(batches, spec.holdout_fraction) >= 1
    if not holds_out and (intent.scores_on_holdout or any(m.selector.needs_holdout() for _, m, _ in intent.runs)):
        raise ReplacemeError(f"scoring plans needs held-out calibration batches, and {batches} batch(es) at "
                             f"--holdout-fraction {spec.holdout_fraction:g} hold none out: give more records "
                             "(--calib-samples) or a larger --holdout-fraction")


def _check_perplexity(intent: Intent) -> None:
    from replaceme.loading import load_config, load_tokenizer, local_model_dir

    spec = intent.evaluation
    if spec is None or not spec.ppl or not isinstance(intent.model, (str, Path)):
        return
    local = local_model_dir(intent.model)
    if local is None:  # a hub id: its tokenizer comes with the download
        return
    from replaceme.evaluation import check_perplexity_sources

    config = load_config(str(local), str(intent.model), intent.loading.trust_remote_code)
    check_perplexity_sources(spec, load_tokenizer(str(local), str(intent.model), config, intent.loading.trust_remote_code),
                             config)


def _check_offload(intent: Intent) -> None:
    """Everything ``--offload`` cannot do, refused from the options and the file headers."""
    for path in [intent.model, *intent.include]:
        offloadable(path)
    for path in intent.include:  # read layer by layer like the model: its architecture needs an adapter
        model_facts(path, intent.loading.trust_remote_code)
    for method in intent.all_methods:
        method.check_offload()
    if intent.tasks:
        from replaceme.evaluation.lm_eval_runner import check_offload_task_types

        check_offload_task_types(intent.tasks, task_data=intent.task_data, tasks_dir=intent.tasks_dir)


def offloadable(model: Any) -> None:
    """``model`` can be read layer by layer: a local directory with a safetensors checkpoint
    whose tensors ``--offload`` can read (headers only)."""
    from replaceme.checkpoint import Checkpoint
    from replaceme.errors import shorten
    from replaceme.loading import local_model_dir

    if not isinstance(model, (str, Path)):
        raise ReplacemeError("--offload needs a model directory, not a loaded model")
    local = local_model_dir(model)
    if local is None:
        raise ReplacemeError(f"--offload needs a local model directory (got '{shorten(str(model))}'); download it first")
    Checkpoint(local)


def model_facts(model: Any, trust_remote_code: bool = False) -> Facts | None:
    """The adapter and layer count of ``model``: from a loaded model object as it is, from a
    local directory's ``config.json`` on an empty model (no weights read), None for a hub id."""
    from replaceme.registry import adapter_for

    if not isinstance(model, (str, Path)):
        return _facts(adapter_for(model), model)
    from replaceme.loading import load_config, local_model_dir
    from replaceme.offload.load import empty_model

    local = local_model_dir(model)
    if local is None:
        return None
    empty = empty_model(load_config(str(local), str(model), trust_remote_code), str(model),
                        trust_remote_code=trust_remote_code)
    return _facts(adapter_for(empty), empty)


def _check_architecture(intent: Intent, facts: Facts) -> dict[tuple[str, int], str]:
    """Each run's method on this architecture at its budget; ``extra`` and bare budgets too."""
    from replaceme.checks import check_layers
    from replaceme.pipeline import one_line

    for layers in intent.layers:
        check_layers(layers, facts.num_layers)
    for method in intent.methods:
        method.check_model(facts.adapter)
        method.check_modules(facts.model, facts.adapter)
    extra = intent.extra(facts.num_layers) if intent.extra is not None else None
    errors: dict[tuple[str, int], str] = {}
    live = []
    for label, method, layers in intent.runs:
        try:
            check_layers(layers, facts.num_layers)
            method.check_model(facts.adapter)
            method.check_modules(facts.model, facts.adapter)
            live.append((method, layers, method.stats_request(facts.num_layers, layers)))
        except Exception as exc:  # noqa: BLE001 - a plugin may raise anything: that run is refused
            if intent.strict:
                raise
            errors[(label, layers)] = one_line(exc)
    if facts.hidden_size:
        from replaceme.passes import check_fits_before_loading

        check_fits_before_loading(live, extra, num_layers=facts.num_layers, hidden=facts.hidden_size,
                                  weight_bytes=facts.weight_bytes, memory=intent.memory)
    return errors
