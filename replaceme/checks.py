"""Checks of a run's inputs that are cheap next to the work they guard.

Every command calls these before it loads a model or runs a calibration pass,
so that a typo, a missing or undecodable file, an unknown task or device fails
in one line at once instead of after minutes of work.
"""

from __future__ import annotations

from typing import Any

from replaceme.errors import ReplacemeError


def check_model_inputs(model: str, device: str = "auto") -> None:
    """The device name is known and a local model path is a model directory."""
    from replaceme.loading import check_device_name, check_model_source
    from replaceme.model_sources import registered_name

    check_device_name(device)
    if registered_name(model) is None:
        check_model_source(model)


def check_layers(layers: int, num_layers: int) -> None:
    """``--layers N`` must leave at least one layer: ``1 <= N < L``."""
    if not 1 <= layers < num_layers:
        raise ReplacemeError(f"--layers must be between 1 and {num_layers - 1} for a model with {num_layers} layers, "
                             f"got {layers}")


def check_layer_budget(layers: int, model: str | None) -> None:
    """``--layers N`` before the model is loaded: at least 1, and below the layer count
    of a local model's ``config.json`` (a hub id, or a model object given as None, is
    checked once it is loaded)."""
    from replaceme.loading import config_layer_count
    from replaceme.model_sources import registered_name

    total = None if model is None or registered_name(model) is not None else config_layer_count(model)
    if total is not None:
        check_layers(layers, total)
    elif layers < 1:
        raise ReplacemeError(f"--layers must be at least 1, got {layers} (it is the number of layers to remove)")


def check_text_input(source: Any, option: str) -> None:
    """A local text source exists and decodes completely (every record has the
    column); the records are kept in memory, so the run does not read it twice.
    Hub datasets are checked when they are loaded."""
    from replaceme.data.texts import TextSource, load_texts

    if isinstance(source, str):
        source = TextSource(source)
    if not source.is_local:
        return
    try:
        load_texts(source)
    except ReplacemeError as exc:
        raise ReplacemeError(f"{option}: {exc}") from None


def check_evaluation_inputs(spec: Any) -> None:
    """Every ``--ppl`` source decodes and every task name exists (an :class:`EvalSpec`)."""
    from replaceme.data.texts import TextSource

    spec.validate()
    for source in spec.ppl:
        check_text_input(TextSource(source, column=spec.ppl_column, split=spec.ppl_split), "--ppl")
    if spec.tasks:
        from replaceme.evaluation.lm_eval_runner import check_task_names

        check_task_names(spec.tasks, task_data=spec.task_data, tasks_dir=spec.tasks_dir)
