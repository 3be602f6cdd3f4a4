"""The model card (``README.md``) written into every pruned model directory.

Hugging Face Hub model cards are Markdown with YAML front matter
(https://huggingface.co/docs/hub/model-cards). Ours carries::

    ---
    base_model: <the model that was pruned>
    tags: [replaceme, depth-pruning, pruned]
    library_name: transformers
    license: <the source's, when known>
    pipeline_tag: text-generation
    ---

and then how the model was made (method, stages, blocks, options,
calibration), the command that reproduces it, and evaluation results when
there are any (``replaceme evaluate DIR --model-card`` adds them later).
Everything comes from ``pruning.json``'s content, so the card never disagrees
with it.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
TAGS = ["replaceme", "depth-pruning", "pruned"]
_RESULTS_HEADING = "## Evaluation"


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """``(front matter, body)`` of a Markdown file with optional ``---`` YAML front matter."""
    import yaml

    if text.startswith("---"):
        lines = text.splitlines(keepends=True)
        for i in range(1, len(lines)):
            if lines[i].strip() == "---":
                try:
                    data = yaml.safe_load("".join(lines[1:i])) or {}
                except yaml.YAMLError:
                    return {}, text
                return (data if isinstance(data, dict) else {}), "".join(lines[i + 1 :])
    return {}, text


def source_license(source: str | None) -> str | None:
    """The license of the source model, when it can be known without guessing.

    A local directory: its ``README.md`` front matter ``license`` (or a
    ``license`` field in ``config.json``). A hub id: the same front matter from
    the hub's ``README.md`` when it can be fetched (silently nothing offline).
    """
    if not source:
        return None
    path = Path(source).expanduser()
    card: Path | None = None
    if path.is_dir():
        card = path / CARD_FILE
        config = path / "config.json"
        if not card.is_file() and config.is_file():
            try:
                value = json.loads(config.read_text(encoding="utf-8")).get("license")
            except (OSError, ValueError):
                value = None
            return str(value) if value else None
    elif source.count("/") == 1 and not source.startswith((".", "/", "~")):
        try:
            from huggingface_hub import hf_hub_download

            card = Path(hf_hub_download(source, CARD_FILE))
        except Exception as exc:  # offline, gated, no card: the license stays unknown
            log.debug("no model card for %s: %s", source, exc)
            return None
    if card is None or not card.is_file():
        return None
    meta, _ = split_front_matter(card.read_text(encoding="utf-8", errors="replace"))
    value = meta.get("license")
    return str(value) if value else None


def _q(value: Any) -> str:
    return shlex.quote(str(value))


def reproduce_command(meta: dict[str, Any], output: str | Path) -> str:
    """The ``replaceme prune`` command that makes this model again, from ``pruning.json``'s content.

    Every option whose value differs from the method's default is given with
    ``-o``; the calibration is spelled out in full, seed included.
    """
    from replaceme.methods import resolve_method

    stages = {key.split(":", 1)[0]: key.split(":", 1)[1] for key in meta.get("options", {})}
    parts = ["replaceme", "prune", _q(meta.get("source_model") or "MODEL"), "-m", _q(meta["method"]),
             "-n", str(meta["layers_removed"])]
    try:
        recipe = resolve_method(meta["method"], {})
        defaults = recipe.options()
        if stages.get("selector") and stages["selector"] != recipe.selector.name:
            parts += ["--selector", _q(stages["selector"])]
        if stages.get("compensator") and stages["compensator"] != recipe.compensator.name:
            parts += ["--compensator", _q(stages["compensator"])]
        defaults = resolve_method(meta["method"], {}, selector=stages.get("selector"),
                                  compensator=stages.get("compensator")).options()
    except Exception:  # a method label that is no registered name (e.g. from a plan file)
        defaults = {}
    for component, values in meta.get("options", {}).items():
        for key, value in values.items():
            if defaults.get(component, {}).get(key, object()) != value:
                parts += ["-o", key, _q(json.dumps(value) if not isinstance(value, str) else value)]
    calib = meta.get("calibration")
    if calib:
        parts += ["--calib", _q(calib["source"])]
        flags = (("column", "--calib-column", "text"), ("split", "--calib-split", "train"),
                 ("samples", "--calib-samples", None), ("max_length", "--max-length", None),
                 ("batch_size", "--batch-size", None), ("order", "--calib-order", "shuffle"),
                 ("holdout_fraction", "--holdout-fraction", None), ("chat_template", "--chat-template", "auto"))
        for key, flag, default in flags:
            if key in calib and calib[key] != default:
                parts += [flag, _q(calib[key])]
        if calib.get("drop_last"):
            parts.append("--calib-drop-last")
    parts += ["--seed", str(meta.get("seed", 0)), "--output", _q(output)]
    return " ".join(parts)


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def results_section(results: dict[str, Any]) -> str:
    """Markdown for evaluation results: ``{"metrics": {name: value}, "spec": ...}`` or plain metrics."""
    metrics = results.get("metrics", results)
    lines = [_RESULTS_HEADING, "", "| benchmark | value |", "|---|---|"]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in metrics.items() if isinstance(value, (int, float))]
    if results.get("command"):
        lines += ["", "Measured with:", "", "```bash", results["command"], "```"]
    return "\n".join(lines) + "\n"


def render(meta: dict[str, Any], output: str | Path, *, license: str | None = None,
           results: dict[str, Any] | None = None) -> str:
    """The whole model card for a pruned model described by ``meta`` (``pruning.json``)."""
    import yaml

    base = meta.get("source_model") or "unknown"
    front: dict[str, Any] = {"base_model": base, "tags": list(TAGS), "library_name": "transformers"}
    if license:
        front["license"] = license
    front["pipeline_tag"] = "text-generation"
    blocks = [tuple(c["block"]) for c in meta.get("compensations", [])] or [tuple(b) for b in meta.get("plan", {}).get("blocks", [])]
    kinds = sorted({c["kind"] for c in meta.get("compensations", [])})
    stages = ", ".join(f"{k.split(':', 1)[0]} `{k.split(':', 1)[1]}`" for k in meta.get("options", {}))
    calib = meta.get("calibration") or {}
    versions = meta.get("versions", {})
    how = [
        ("method", f"`{meta['method']}` ({stages})" if stages else f"`{meta['method']}`"),
        ("decoder layers", f"{meta.get('layers_before', '?')} → {meta.get('layers_after', '?')} "
                           f"({meta['layers_removed']} removed)"),
        ("blocks removed", ", ".join(f"[{s}, {e})" for s, e in blocks) or "none"),
        ("compensation", ", ".join(kinds) or "none"),
    ]
    if calib:
        how += [
            ("calibration data", f"`{calib['source']}`" + (f" (column `{calib['column']}`)" if calib.get("column") not in (None, "text") else "")),
            ("calibration records", f"{calib.get('samples')} ({'first, in file order' if calib.get('order') == 'file' else 'seeded random choice'}), "
                                    f"max length {calib.get('max_length')}, batch size {calib.get('batch_size')}"),
            ("held out", f"{calib.get('holdout_fraction', 0.1):g} of the calibration batches"),
        ]
    how += [("seed", meta.get("seed", 0)), ("made with", ", ".join(f"{k} {v}" for k, v in versions.items()) or "replaceme")]
    options = {k: v for k, v in meta.get("options", {}).items() if v}
    body = [
        f"# {Path(output).name}",
        "",
        f"`{base}` with {meta['layers_removed']} of its {meta.get('layers_before', '?')} decoder layers removed "
        f"(depth pruning) by replaceme with the `{meta['method']}` method. It is a standard "
        "Hugging Face model: `AutoModelForCausalLM.from_pretrained` loads it without custom code.",
        "",
        "## How it was pruned",
        "",
        _table([(k, _fmt(v)) for k, v in how]),
        "",
        "Options in effect (by stage):",
        "",
        "```json",
        json.dumps(options, indent=2, default=str),
        "```",
        "",
        "`pruning.json` in this folder has everything above plus per-block diagnostics, timings and memory.",
        "",
        "## Reproduce",
        "",
        "```bash",
        reproduce_command(meta, output),
        "```",
        "",
    ]
    if results:
        body.append(results_section(results))
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + "\n".join(body)


def write(directory: str | Path, meta: dict[str, Any], *, output_name: str | Path | None = None,
          results: dict[str, Any] | None = None) -> Path:
    """Write ``README.md`` into ``directory`` (a pruned model being saved)."""
    from replaceme.outputs import write_text_atomic

    directory = Path(directory)
    text = render(meta, output_name or directory, license=source_license(meta.get("source_model")), results=results)
    path = directory / CARD_FILE
    write_text_atomic(path, text)
    return path


def add_results(directory: str | Path, results: dict[str, Any]) -> Path:
    """Put evaluation results into an existing replaceme model card (replacing earlier ones)."""
    from replaceme.outputs import write_text_atomic

    path = Path(directory) / CARD_FILE
    if not path.is_file():  # pruned before model cards existed: write one from pruning.json
        meta = json.loads((Path(directory) / "pruning.json").read_text(encoding="utf-8"))
        write(directory, meta)
    text = path.read_text(encoding="utf-8")
    head, sep, _ = text.partition("\n" + _RESULTS_HEADING + "\n")
    text = head.rstrip("\n") + "\n\n" + results_section(results)
    write_text_atomic(path, text)
    return path
