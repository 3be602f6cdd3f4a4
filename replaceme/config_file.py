"""``--config FILE.yaml`` for ``prune``: our option names, or the keys of the
ReplaceMe reference configs (so users of the original repository can bring theirs).

Reference keys and what they become:

==================== =============================================================
``method``           ``lstsq`` → ``replaceme-lstsq``, ``cosine`` → ``replaceme-cosine``
``model_path``       the model
``dataset``          ``--calib``; ``dataset_column`` → ``--calib-column``;
                     ``dataset_subset`` → ``--calib-split``; ``dataset_size`` → ``--calib-samples``
``batch_size``, ``max_length``   the same
``layers_to_skip``   layers per block; with ``num_A`` blocks, ``--layers = layers_to_skip × num_A``
``num_A``            option ``num_blocks``; ``merge_consecutive``, ``alpha``, ``diag``,
                     ``loss``, ``solver`` → options of the same name
``save_path``        ``--output``
==================== =============================================================

Keys that only matter to the reference (``token``, ``use_4bit``, ``distances_path``,
``save_transform_only``, ...) are ignored with a warning. YAML is read with ``safe_load``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError, did_you_mean

log = logging.getLogger(__name__)

_REFERENCE_METHODS = {"lstsq": "replaceme-lstsq", "cosine": "replaceme-cosine"}
_RENAME = {
    "model_path": "model",
    "model": "model",
    "dataset": "calib",
    "dataset_column": "calib_column",
    "dataset_subset": "calib_split",
    "dataset_size": "calib_samples",
    "save_path": "output",
    "num_A": "num_blocks",
}
#: keys that map to ``prune`` parameters (everything else known is a method option)
PRUNE_KEYS = {
    "method", "model", "layers", "calib", "calib_column", "calib_split", "calib_samples", "max_length",
    "batch_size", "seed", "output", "overwrite", "selector", "compensator", "device", "dtype", "chat_template",
}
_OPTION_KEYS = {"num_blocks", "merge_consecutive", "alpha", "diag", "loss", "solver", "mask_padding"}
_IGNORED = {"token", "use_4bit", "distances_path", "save_transform_only", "thri", "two_vectors",
            "start_id", "end_id", "num_layer", "min_distance_layer", "accurate"}


def read_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a YAML config into (prune parameters, method options)."""
    from replaceme.paths import read_yaml_mapping

    raw = read_yaml_mapping(path, "config file")
    params: dict[str, Any] = {}
    options: dict[str, Any] = dict(raw.pop("options", None) or {})
    layers_per_block = raw.pop("layers_to_skip", None)
    for key, value in raw.items():
        key = _RENAME.get(key, key).replace("-", "_")
        if key in PRUNE_KEYS:
            params[key] = value
        elif key in _OPTION_KEYS:
            options[key] = value
        elif key in _IGNORED:
            log.warning("%s: key '%s' of the reference config is ignored", path, key)
        else:
            known = PRUNE_KEYS | _OPTION_KEYS | set(_RENAME)
            raise ReplacemeError(f"{path}: unknown key '{key}'{did_you_mean(key, known)}")
    if "method" in params:
        params["method"] = _REFERENCE_METHODS.get(params["method"], params["method"])
    if layers_per_block is not None:
        params.setdefault("layers", int(layers_per_block) * int(options.get("num_blocks", 1)))
    return params, options
