"""The model card (``README.md``) written into every pruned model directory.

Hugging Face Hub model cards are Markdown with YAML front matter
(https://huggingface.co/docs/hub/model-cards). Ours is built with
``huggingface_hub``'s own :class:`~huggingface_hub.ModelCard` and
:class:`~huggingface_hub.ModelCardData`, so the Hub parses it as it parses its own:

- ``base_model``: the source's Hub id (:mod:`replaceme.hub_ids`; omitted for a
  local model that did not come from the Hub: ``pruning.json`` keeps its path);
- ``tags`` (``replaceme``, ``depth-pruning``, ``pruned``), ``library_name:
  transformers``, ``pipeline_tag: text-generation``, the source's ``license`` when known;
- ``model-index`` (``eval_results``) once there are evaluation results.

The body says how the model was pruned (method, stages and the plugin
distribution of each, blocks, calibration, the held-out part actually used),
the ``replaceme prune`` command that makes it again, and evaluation results
(metric, value, standard error, the unpruned model's value and the chance level)
when ``replaceme evaluate DIR --model-card`` adds them.

Everything is rendered from ``pruning.json``'s content alone (no registry
lookups), so the card never disagrees with it; every user-given text is escaped
(:mod:`replaceme.escaping`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from replaceme.escaping import md_code, md_fence, md_table_code, md_text
from replaceme.reproduce import PATH_NOTE, reproduce_command

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
TAGS = ["replaceme", "depth-pruning", "pruned"]
_RESULTS_HEADING = "## Evaluation"

__all__ = ["CARD_FILE", "add_results", "render", "reproduce_command", "source_license", "split_front_matter", "write"]


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """``(front matter, body)`` of a Markdown file with optional ``---`` YAML front matter."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text, ignore_metadata_errors=True)
    except ValueError:
        return {}, text
    return card.data.to_dict(), card.text


def source_license(source: str | None) -> str | None:
    """The license of the source model, when it can be known without guessing.

    A local directory: its ``README.md`` front matter ``license`` (or a
    ``license`` field in ``config.json``). A hub id: the same front matter from
    the hub's ``README.md`` when it can be fetched (silently nothing offline).
    Called when the model is saved; the result is recorded in ``pruning.json``.
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


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return md_text(value)


def _metric_name(name: str, metric: str | None) -> str:
    return "perplexity" if name.startswith("ppl:") else (metric or "score")


def healing_section(heal: dict[str, Any]) -> str:
    """Markdown for the healing stage recorded in ``pruning.json`` (healer, data, budget, loss, cost)."""
    loss, usage, data, opts = heal.get("loss", {}), heal.get("usage", {}), heal.get("data", {}), heal.get("options", {})
    cuda = f", peak CUDA {_fmt(usage['peak_cuda_mb'])} MB" if usage.get("peak_cuda_mb") is not None else ""
    rows = [
        ["healer", f"{md_code(heal.get('healer'))} (objective {md_code(opts.get('objective'))}, lr {_fmt(opts.get('lr'))}, "
                   f"batch {_fmt(opts.get('batch_size'))} × {_fmt(opts.get('seq_len'))} tokens)"],
        ["healing data", f"{md_code(data.get('source'))} ({_fmt(data.get('sequences'))} packed sequences, "
                         f"{_fmt(data.get('heldout_sequences'))} held out)"],
        ["steps", f"{_fmt(heal.get('steps'))} ({_fmt(heal.get('tokens_seen'))} tokens seen"
                  + (", stopped early" if heal.get("stopped_early") else "") + ")"],
        ["held-out loss", f"{_fmt(loss.get('heldout_start'))} → {_fmt(loss.get('heldout_end'))} "
                          f"(best {_fmt(loss.get('heldout_best'))} at step {_fmt(loss.get('best_step'))})"],
        ["time", f"{_fmt(usage.get('seconds'))} s, peak RSS {_fmt(usage.get('peak_rss_mb'))} MB{cuda}"],
    ]
    return "\n".join(["## Healing", "", "After pruning, the model was trained back (healed); every option and the "
                      "loss curve are in `pruning.json`.", "", _table(["", ""], rows), ""])


def results_section(results: dict[str, Any]) -> str:
    """Markdown for evaluation results: ``{"metrics", "stderr", "task_metrics", "chance", "baseline", "command"}``."""
    metrics = results.get("metrics", {})
    stderr, names = results.get("stderr", {}), results.get("task_metrics", {})
    chance, baseline = results.get("chance", {}), results.get("baseline") or {}
    rows = []
    for name, value in metrics.items():
        if not isinstance(value, (int, float)):
            continue
        rows.append([md_table_code(name.removeprefix("ppl:")), md_text(_metric_name(name, names.get(name))), _fmt(value),
                     _fmt(stderr.get(name)), _fmt(baseline.get(name)), _fmt(chance.get(name))])
    lines = [_RESULTS_HEADING, "", _table(["benchmark", "metric", "value", "stderr", "unpruned model", "chance"], rows)]
    if not baseline:
        lines += ["", "The unpruned model was not evaluated with these settings."]
    if results.get("command"):
        lines += ["", "Measured with:", "", md_fence(results["command"], "bash")]
    return "\n".join(lines) + "\n"


def eval_results(meta: dict[str, Any], results: dict[str, Any] | None) -> list[Any]:
    """``model-index`` entries (``huggingface_hub.EvalResult``) of the evaluation results."""
    from huggingface_hub import EvalResult

    out = []
    for name, value in ((results or {}).get("metrics") or {}).items():
        if not isinstance(value, (int, float)):
            continue
        source = name.removeprefix("ppl:")
        dataset, _, config = source.partition(":") if name.startswith("ppl:") else (source, "", "")
        metric = _metric_name(name, (results or {}).get("task_metrics", {}).get(name))
        out.append(EvalResult(task_type="text-generation", dataset_type=Path(dataset).name or dataset,
                              dataset_name=source, dataset_config=config or None, metric_type=metric,
                              metric_name=metric, metric_value=float(value)))
    return out


def card_data(meta: dict[str, Any], results: dict[str, Any] | None = None) -> Any:
    """The front matter as ``huggingface_hub.ModelCardData``."""
    from huggingface_hub import ModelCardData

    evals = eval_results(meta, results)
    return ModelCardData(
        base_model=meta.get("base_model") or None, tags=list(TAGS), library_name="transformers",
        license=meta.get("source_license") or None, pipeline_tag="text-generation",
        model_name=meta.get("output_name") or "pruned-model" if evals else None, eval_results=evals or None,
    )


def _how(meta: dict[str, Any]) -> list[list[str]]:
    """The rows of "How it was pruned"."""
    blocks = [tuple(c["block"]) for c in meta.get("compensations", [])] or [tuple(b) for b in meta.get("plan", {}).get("blocks", [])]
    kinds = sorted({c["kind"] for c in meta.get("compensations", [])})
    stages = "; ".join(f"{stage} {md_table_code(info.get('name'))} from {md_table_code(info.get('distribution') or 'an unpackaged module')}"
                       + (f" {md_text(info['version'])}" if info.get("version") else "")
                       for stage, info in meta.get("stages", {}).items())
    calib, held = meta.get("calibration") or {}, meta.get("holdout") or {}
    rows = [
        ["method", md_table_code(meta["method"]) + (f" ({stages})" if stages else "")],
        ["decoder layers", f"{meta.get('layers_before', '?')} → {meta.get('layers_after', '?')} ({meta['layers_removed']} removed)"],
        ["blocks removed", ", ".join(f"[{s}, {e})" for s, e in blocks) or "none"],
        ["compensation", md_text(", ".join(kinds) or "none")],
    ]
    if calib:
        order = "first, in file order" if calib.get("order") == "file" else "seeded random choice"
        rows += [
            ["calibration data", md_table_code(calib["source"]) + (f" (column {md_table_code(calib['column'])})"
                                                                  if calib.get("column") not in (None, "text") else "")],
            ["calibration records", f"{_fmt(calib.get('samples'))} ({order}), max length {_fmt(calib.get('max_length'))}, "
                                    f"batch size {_fmt(calib.get('batch_size'))}"],
            ["held out of every fit", f"{held.get('fraction', 0.0):.3g} of the calibration tokens ({held.get('batches', 0)} "
                                      f"batches, {held.get('tokens', 0)} tokens)" if held.get("batches") else "nothing (0)"],
        ]
    project = meta.get("project") or {}
    made = [f"replaceme {project.get('version')}" + (f" (git {project['git_revision'][:12]}"
                                                     f"{', modified' if project.get('git_dirty') else ''})"
                                                     if project.get("git_revision") else "")]
    made += [f"{k} {v}" for k, v in (meta.get("versions") or {}).items() if k != "replaceme" and v]
    rows += [["seed", _fmt(meta.get("seed", 0))], ["made with", md_text(", ".join(made))]]
    return rows


def render(meta: dict[str, Any], output: str | Path | None = None, *, results: dict[str, Any] | None = None) -> str:
    """The whole model card for a pruned model described by ``meta`` (``pruning.json``'s content)."""
    from huggingface_hub import ModelCard

    name = Path(output).name if output else meta.get("output_name") or "pruned model"
    base = meta.get("base_model")
    source = md_code(base) if base else "A local model"
    recipe = meta.get("recipe") or {}
    ignored = recipe.get("ignored_options") or {}
    options = {k: v for k, v in meta.get("options", {}).items() if v}
    body = [
        f"# {md_text(name)}", "",
        f"{source} with {meta['layers_removed']} of its {meta.get('layers_before', '?')} decoder layers removed "
        f"(depth pruning) by replaceme with the {md_code(meta['method'])} method. It is a standard "
        "Hugging Face model: `AutoModelForCausalLM.from_pretrained` loads it without custom code.", "",
        "## How it was pruned", "", _table(["", ""], _how(meta)), "",
        "Options in effect (by stage):", "", md_fence(json.dumps(options, indent=2, default=str), "json"), "",
    ]
    if ignored:
        body += ["Options given that this configuration does not read (they did nothing):", "",
                 *(f"- {md_code(k)}: {md_text(v)}" for k, v in ignored.items()), ""]
    body += ["`pruning.json` in this folder has everything above plus per-block diagnostics, timings and memory.", ""]
    if meta.get("healing"):
        body.append(healing_section(meta["healing"]))
    body += ["## Reproduce", "", md_fence(reproduce_command(meta), "bash"), "", PATH_NOTE, ""]
    if results:
        body.append(results_section(results))
    content = "---\n" + card_data(meta, results).to_yaml() + "\n---\n\n" + "\n".join(body)
    return str(ModelCard(content))


def write(directory: str | Path, meta: dict[str, Any], *, results: dict[str, Any] | None = None) -> Path:
    """Write ``README.md`` into ``directory`` (a pruned model being saved)."""
    from replaceme.outputs import write_text_atomic

    path = Path(directory) / CARD_FILE
    write_text_atomic(path, render(meta, results=results))
    return path


def add_results(directory: str | Path, results: dict[str, Any]) -> Path:
    """Render the card of ``directory`` again from its ``pruning.json``, with evaluation ``results``."""
    meta = json.loads((Path(directory) / "pruning.json").read_text(encoding="utf-8"))
    return write(directory, meta, results=results)
