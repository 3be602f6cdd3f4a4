"""``--config FILE.yaml`` for ``prune``: our option names, or the keys of the
ReplaceMe reference configs (github.com/mts-ai/ReplaceMe, ``examples/*.yaml`` and
``reproduce/*.yaml``), so users of the original repository can bring theirs.

A file is read as a *reference config* when it has any key that only the
reference uses (``model_path``, ``dataset``, ``dataset_size``, ``layers_to_skip``,
``num_A``, ...). It then gets the reference's data semantics, so that
``method: lstsq`` gives the reference's T:

- the first ``dataset_size`` records in file order (all when it is null),
  batched in that order, and a last batch smaller than ``batch_size`` dropped
  (the reference's ``DataLoader(shuffle=False, drop_last=True)``);
- no held-out batches (``--holdout-fraction 0``): every batch enters the fit;
- for ``cosine``: every calibration token in the sample (the reference keeps
  them all), and with several blocks each fitted on the model with the earlier
  ones already replaced (``refit``), as the reference's pipeline does.

What still differs on purpose: pad tokens are left out of every statistic
(``-o mask_padding false`` includes them, as the reference does), and a block
that ends at the last layer is compared with that layer's output before the
final norm (the reference uses the post-norm ``hidden_states[-1]``).

Every reference key is mapped (:data:`REFERENCE_KEYS` says to what: the core's
generic keys, and the method keys of the plugins' translators), or warned
about precisely when it cannot matter here, or rejected when it asks for
something we do not do. Command-line flags override the file. YAML is read
with ``safe_load``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from replaceme.config_translator import ReferenceRequest
from replaceme.errors import ReplacemeError, did_you_mean, shown

log = logging.getLogger(__name__)

#: Generic reference key -> what it becomes here; the method-specific keys come from the
#: plugins' translators (``register_config_translators``), see :func:`reference_keys`.
CORE_REFERENCE_KEYS: dict[str, str] = {
    "model_path": "MODEL",
    "dataset": "`--calib` (the reference's hub shortcuts are expanded: `wikitext` → `wikitext:wikitext-2-raw-v1`, "
    "`allenai/c4` → `allenai/c4:en`, `HuggingFaceFW/fineweb` → `HuggingFaceFW/fineweb:sample-10BT`, "
    "`Open-Orca/SlimOrca` → its `conversations` through the chat template); a local file works too",
    "dataset_column": "`--calib-column`",
    "dataset_subset": "`--calib-split`",
    "dataset_size": "`--calib-samples` with `--calib-order file`: the first N records in file order (null: all)",
    "batch_size": "`--batch-size` (a last, smaller batch is dropped, as the reference's DataLoader does)",
    "max_length": "`--max-length`",
    "layers_to_skip": "layers per block: `--layers` = `layers_to_skip` × `num_A`",
    "num_A": "`-o num_blocks`",
    "merge_consecutive": "`-o merge_consecutive`",
    "save_path": "`--output` (used as given: no `_ReplaceMe_lstsq_N` suffix is appended); null: "
    "`output_models/<model>_<n>_layers_<dataset>_<size>_ReplaceMe_<method>_<num_A>` as there, less the block indices",
    "distances_path": "null: distances computed in the same pass, as the reference does; a path: warned, "
    "distances are still computed (one pass gives them for free)",
    "use_4bit": "`true`: `--calib-4bit` (the pass on an NF4 copy, the fold on the full weights, as there) on a "
    "CUDA GPU; without one, warned, the pass runs in `--dtype`",
    "token": "warned: use `HF_TOKEN` or `hf auth login`",
    "save_transform_only": "`--save-transforms`: T and the removed blocks also written as `transforms.safetensors` beside the model (which keeps T folded in)",
    "min_distance_layer": "warned: the reference does not use it either (selection scans every block)",
    "activations_save_path": "warned: unused by the reference too",
    "start_id": "warned: the reference pipeline's own bookkeeping",
    "end_id": "warned: the reference pipeline's own bookkeeping",
    "num_layer": "warned: the reference pipeline's own bookkeeping",
    "tasks": "warned: prune does not evaluate; run `replaceme evaluate OUTPUT --tasks ...`",
}

#: Generic keys that only a reference config has (their presence switches on the reference semantics).
_REFERENCE_ONLY = set(CORE_REFERENCE_KEYS) - {"batch_size", "max_length", "merge_consecutive", "tasks"}
_HUB_SHORTCUTS = {
    "wikitext": "wikitext:wikitext-2-raw-v1",
    "allenai/c4": "allenai/c4:en",
    "HuggingFaceFW/fineweb": "HuggingFaceFW/fineweb:sample-10BT",
}
_RENAME = {"model_path": "model", "model": "model", "dataset": "calib", "dataset_column": "calib_column",
           "dataset_subset": "calib_split", "dataset_size": "calib_samples", "save_path": "output", "num_A": "num_blocks"}
#: keys that map to ``prune`` parameters (everything else known is a method option)
PRUNE_KEYS = {
    "method", "model", "layers", "calib", "calib_column", "calib_split", "calib_samples", "max_length",
    "batch_size", "seed", "output", "overwrite", "selector", "compensator", "device", "dtype", "chat_template",
    "order", "holdout_fraction", "drop_last", "calib_4bit", "save_transforms", "offload", "spill_dir", "gram_device",
    "stats_passes", "disk_budget", "memory_budget",
}
_WARN = {
    "token": "use HF_TOKEN or `hf auth login` for gated models",
    "min_distance_layer": "the reference does not use it either",
    "activations_save_path": "the reference does not use it either",
    "start_id": "it is the reference pipeline's own bookkeeping",
    "end_id": "it is the reference pipeline's own bookkeeping",
    "num_layer": "it is the reference pipeline's own bookkeeping",
}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def option_names() -> set[str]:
    """Every option name of a registered selector, compensator or merger: the keys a
    config may set besides ``prune``'s own (``PRUNE_KEYS``), read from the registry so
    that a renamed or added option is what ``--config`` accepts. Values are checked
    against the chosen method's stages when it is resolved, before any work."""
    from replaceme.options import option_fields
    from replaceme.registry import registry

    reg = registry()
    return {name for table in (reg.selectors, reg.compensators, reg.mergers) for cls in table.values()
            for name in option_fields(cls.Options)}


def _translators() -> list[Any]:
    """The registered :class:`~replaceme.config_translator.ConfigTranslator` objects, in registry order."""
    from replaceme.registry import registry

    return list(registry().config_translators.values())


def reference_methods() -> dict[str, str]:
    """Reference method name -> our method, from every registered translator."""
    return {ref: ours for t in _translators() for ref, ours in t.methods.items()}


def reference_keys() -> dict[str, str]:
    """Every reference key -> what it becomes here: ``method`` (built from the
    translators' method names), the core's generic keys, then each translator's."""
    methods = ", ".join(f"`{ref}` → `-m {ours}`" for ref, ours in reference_methods().items())
    keys = {"method": methods, **CORE_REFERENCE_KEYS}
    for translator in _translators():
        keys.update(translator.keys)
    return keys


def __getattr__(name: str) -> Any:
    if name == "REFERENCE_KEYS":  # built from the registry on use: plugins add their keys
        return reference_keys()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_reference_config(raw: dict[str, Any]) -> bool:
    """Whether a config uses the ReplaceMe reference's keys."""
    marks = _REFERENCE_ONLY.union(*(t.marks_reference for t in _translators()))
    return any(key in marks for key in raw)


def _prune_schema() -> dict[str, Any]:
    """The type of every ``prune`` parameter a config may set (checked after the reference keys are mapped)."""
    from replaceme.schema import BOOL, COUNT, INT_LIMIT, SEED, STR, Key

    return {
        "method": STR, "model": STR, "layers": COUNT, "calib": STR, "calib_column": STR, "calib_split": STR,
        "calib_samples": Key(("int",), minimum=1, maximum=INT_LIMIT), "max_length": COUNT, "batch_size": COUNT,
        "seed": SEED, "output": STR, "overwrite": BOOL, "selector": STR, "compensator": STR, "device": STR,
        "dtype": Key(("str",), choices=("auto", "float32", "bfloat16", "float16")),
        "chat_template": Key(("str",), choices=("auto", "on", "off")),
        "order": STR, "holdout_fraction": Key(("float",), minimum=0, maximum=1), "drop_last": BOOL,
        "calib_4bit": BOOL, "save_transforms": BOOL, "offload": BOOL, "spill_dir": STR, "gram_device": STR,
        "stats_passes": Key(("str", "int"), minimum=1, maximum=2, choices=("auto", "1", "2")),
        "disk_budget": Key(("str", "int"), minimum=1),
        "memory_budget": Key(("str", "int"), minimum=1),
    }


def read_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a YAML config into (prune parameters, method options).

    Raises :class:`ReplacemeError` for unknown keys, values of the wrong type (a
    YAML string is not a boolean; the line names the key and the type expected)
    or reference settings we cannot reproduce; logs a warning for each reference
    key that is ignored.
    """
    from replaceme.schema import read_yaml_mapping
    from replaceme.schema import COUNT, Key, check_mapping, check_value

    raw = read_yaml_mapping(path, "config file")
    known_options = option_names()
    reference = is_reference_config(raw)
    params: dict[str, Any] = {}
    raw_options = raw.pop("options", None)
    if raw_options is not None:
        check_value(str(path), "options", raw_options, Key(("mapping",)))
    options: dict[str, Any] = {str(k).replace("-", "_"): v for k, v in (raw_options or {}).items()}
    methods = reference_methods()
    method = raw.get("method")
    method = methods.get(method, method) if isinstance(method, str) else method
    translators = _translators() if reference else []
    owned = {key: t for t in translators for key in t.keys}
    translated: dict[str, dict[str, Any]] = {t.name: {} for t in translators}
    layers_per_block = raw.pop("layers_to_skip", None)
    if layers_per_block is not None:
        check_value(str(path), "layers_to_skip", layers_per_block, COUNT)

    def warn(key: str, why: str) -> None:
        log.warning("%s: key '%s' of the reference config is ignored: %s", path, key, why)

    def reject(key: str, why: str) -> ReplacemeError:
        return ReplacemeError(f"{path}: {key}: {shown(raw[key])} cannot be reproduced here ({why})")

    for key, value in raw.items():
        if key in owned:
            translated[owned[key].name][key] = value
        elif key in _WARN:
            warn(key, _WARN[key])
        elif key == "use_4bit":
            if value and _cuda():
                params["calib_4bit"] = True  # the pass on an NF4 copy, the fold on full weights, as there
            elif value:
                warn(key, "4-bit needs a CUDA GPU; the statistics pass runs in --dtype (float32 on CPU)")
        elif key == "distances_path":
            if value is not None:
                warn(key, "distances are computed again from the calibration data, in the same pass as the statistics")
        elif key == "tasks":
            warn(key, "prune does not evaluate; run `replaceme evaluate OUTPUT --tasks ...` on the result")
        elif key == "save_transform_only":
            params["save_transforms"] = value  # type-checked with the prune keys below
        elif key == "dataset" and reference:
            params["calib"] = _HUB_SHORTCUTS.get(str(value), value)
            if value == "Open-Orca/SlimOrca":
                # the reference formats each conversation with the chat template and calls the result 'text'
                params["calib_column"], params["chat_template"] = "conversations", "on"
            elif value == "fineweb_and_orca":
                raise reject(key, "the reference's fineweb/SlimOrca mix: write the mixed records to a .jsonl and give that")
        elif key == "dataset_column" and reference and raw.get("dataset") == "Open-Orca/SlimOrca":
            pass  # the reference's processed column; the records are its 'conversations'
        elif key == "dataset_size" and reference:
            params["calib_samples"] = sys.maxsize if value is None else value
        else:
            name = _RENAME.get(key, key).replace("-", "_")
            if name in PRUNE_KEYS:
                params[name] = value
            elif name in known_options:
                options[name] = value
            else:
                known = PRUNE_KEYS | known_options | set(_RENAME) | set(reference_keys())
                raise ReplacemeError(f"{path}: unknown key '{key}'{did_you_mean(key, known)}")
    params = check_mapping(params, _prune_schema(), str(path))
    if "num_blocks" in options:
        check_value(str(path), "num_blocks", options["num_blocks"], COUNT)
    if "method" in params:
        params["method"] = methods.get(params["method"], params["method"])
    if layers_per_block is not None:
        params.setdefault("layers", layers_per_block * int(options.get("num_blocks", 1)))
    if reference:
        if params.get("output") is None:
            params["output"] = _reference_output_name({**raw, "layers_to_skip": layers_per_block}, params)
            log.warning("%s: save_path is null: the pruned model goes to %s (the reference's naming, without "
                        "the block indices, which are known only after selection); --output overrides it",
                        path, params["output"])
        params.setdefault("order", "file")
        params.setdefault("drop_last", True)
        params.setdefault("holdout_fraction", 0.0)
        params.setdefault("calib_samples", sys.maxsize)  # dataset_size absent: every record, as there
        for translator in translators:
            request = ReferenceRequest(translated[translator.name], method, raw.get("method"), dict(params),
                                       dict(options), warn, reject)
            options.update(_checked(path, translator, translator.translate(request), known_options))
    return params, options


def _checked(path: str | Path, translator: Any, produced: dict[str, Any], known: set[str]) -> dict[str, Any]:
    """The options a translator produced, each one an option of a registered stage
    (one line naming the translator otherwise: a renamed option must not pass silently)."""
    for name in produced:
        if name not in known:
            raise ReplacemeError(f"{path}: config translator '{translator.name}' produced option '{name}', which no "
                                 f"registered stage has{did_you_mean(name, known)} (a plugin renamed it?)")
    return produced


def _reference_output_name(raw: dict[str, Any], params: dict[str, Any]) -> str:
    """Where the reference saves when ``save_path`` is null, less the block indices:
    ``output_models/<model>_<n>_layers_<dataset>_<size>_ReplaceMe_<method>_<num_A>``."""
    stem = f"{raw.get('model_path')}_{raw.get('layers_to_skip')}_layers_{raw.get('dataset')}_{raw.get('dataset_size')}"
    method = {ours: ref for ref, ours in reference_methods().items()}.get(str(params.get("method")), "pruned")
    return str(Path("output_models") / (stem.replace("/", "_") + f"_ReplaceMe_{method}_{raw.get('num_A', 1)}"))
