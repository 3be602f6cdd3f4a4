"""The ``replaceme prune`` command that makes a pruned model again, from ``pruning.json``'s content.

It repeats what the user asked for, in the form ``prune`` accepts: the recipe's
name with ``--selector``/``--compensator`` for a swapped stage (never the
``selector+compensator`` table label), each option as the user gave it with
``-o``, every calibration setting spelled out, the seed and the dtype. Paths
(model, calibration text, output) are written as they were given: see
:data:`PATH_NOTE`.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

#: printed under the command in a model card
PATH_NOTE = ("Paths are written as they were given to `replaceme prune`; relative ones are relative to the "
             "directory it ran in. `pruning.json` records the source model's path as `source_model`.")

#: ``(calibration key, prune flag)``; every one is written, so the command does not depend on defaults
_CALIBRATION_FLAGS = (
    ("column", "--calib-column"), ("split", "--calib-split"), ("samples", "--calib-samples"),
    ("order", "--calib-order"), ("max_length", "--max-length"), ("batch_size", "--batch-size"),
    ("holdout_fraction", "--holdout-fraction"), ("chat_template", "--chat-template"),
)


def _q(value: Any) -> str:
    return shlex.quote(str(value))


def _value(value: Any) -> str:
    """An option value as ``-o`` takes it (strings as given, others as JSON)."""
    return _q(value if isinstance(value, str) else json.dumps(value))


def _method_args(meta: dict[str, Any]) -> list[str]:
    recipe = meta.get("recipe")
    if not recipe:  # pruned before recipes were recorded: every option in effect
        parts = ["-m", _q(meta["method"])]
        for values in meta.get("options", {}).values():
            parts += [p for key, value in values.items() if value is not None for p in ("-o", key, _value(value))]
        return parts
    parts = ["-m", _q(recipe["method"])]
    for stage in ("selector", "compensator"):
        if recipe.get(stage):
            parts += [f"--{stage}", _q(recipe[stage])]
    if recipe.get("healer"):
        parts += ["--heal", _q(recipe["healer"])]
    for key, value in (recipe.get("options_given") or {}).items():
        parts += ["-o", _q(key), _value(value)]
    return parts


def reproduce_command(meta: dict[str, Any]) -> str:
    """The ``replaceme prune`` command line for the model described by ``meta``."""
    parts = ["replaceme", "prune", _q(meta.get("source_model") or "MODEL"), *_method_args(meta),
             "-n", str(meta["layers_removed"])]
    calib = meta.get("calibration")
    if calib:
        parts += ["--calib", _q(calib["source"])]
        parts += [p for key, flag in _CALIBRATION_FLAGS if calib.get(key) is not None for p in (flag, _q(calib[key]))]
        if calib.get("drop_last"):
            parts.append("--calib-drop-last")
    heal_data = (meta.get("healing") or {}).get("data") or {}
    if heal_data.get("given"):
        parts += ["--heal-data", _q(heal_data["source"])]
        for key, flag, default in (("column", "--heal-column", "text"), ("split", "--heal-split", "train"),
                                   ("samples", "--heal-samples", None)):
            if heal_data.get(key) != default:
                parts += [flag, _q(heal_data[key])]
    if meta.get("dtype") not in (None, "auto"):
        parts += ["--dtype", _q(meta["dtype"])]
    if meta.get("calibration_4bit"):
        parts.append("--calib-4bit")
    parts += ["--seed", str(meta.get("seed", 0)), "--output", _q(meta.get("output") or "OUTPUT")]
    return " ".join(parts)
