"""Models pruned elsewhere as rows of a comparison (``compare --include-model [LABEL=]DIR``).

The ReplaceMe paper compares against width pruning (LLM-Pruner, SliceGPT), which
is outside replaceme's methods; their outputs (or an earlier replaceme output,
or any model directory ``AutoModelForCausalLM`` loads) go through the same
evaluation as the methods and the baseline and get a row with their parameter
count. Perplexity and task scores are only comparable when every row reads
the text the same way, so an included model must have the base model's
tokenizer: the same vocabulary, special tokens and tokenization (checked
before any work, one-line error otherwise).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError, first_line

log = logging.getLogger(__name__)

#: ``Row.method`` of an included model.
EXTERNAL = "external"
#: Texts whose tokenization must agree (beside the vocabulary), mixing cases, digits, spaces and punctuation.
_PROBES = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside!",
    "The 3 quick brown foxes jumped over 12 lazy dogs -- twice; \"really?\" she asked.\n\nNew paragraph:  two  spaces.",
)


@dataclass
class IncludedModel:
    """One ``--include-model``: a row label and a model directory (or hub id)."""

    label: str
    path: str


def parse_include(values: list[Any] | tuple[Any, ...]) -> list[IncludedModel]:
    """``["DIR", "LABEL=DIR", {"label": ..., "path": ...}]`` -> included models.

    The label defaults to the directory's name. A ``=`` in a plain path that
    exists as given is taken as part of the path.
    """
    out = []
    for value in values:
        if isinstance(value, dict):
            if "path" not in value:
                raise ReplacemeError(f"include_models: each entry needs a 'path' (got {value})")
            path, label = str(value["path"]), str(value.get("label") or Path(str(value["path"])).name)
        else:
            text = str(value)
            label, sep, path = text.partition("=")
            if not sep or not label or Path(text).exists():
                label, path = Path(text.rstrip("/")).name or text, text
        if not path:
            raise ReplacemeError(f"--include-model {value!r}: give a directory, or LABEL=DIR")
        out.append(IncludedModel(label=label, path=path))
    return out


def tokenizer_difference(base: Any, other: Any) -> str | None:
    """Why two tokenizers would read text differently, or None when they agree."""
    base_vocab, other_vocab = base.get_vocab(), other.get_vocab()
    if base_vocab != other_vocab:
        diff = len(set(base_vocab.items()) ^ set(other_vocab.items()))
        return f"its vocabulary differs ({len(other_vocab)} vs {len(base_vocab)} tokens, {diff} entries differ)"
    for name in ("bos_token_id", "eos_token_id"):
        if getattr(base, name, None) != getattr(other, name, None):
            return f"its {name} is {getattr(other, name, None)}, not {getattr(base, name, None)}"
    for text in _PROBES:
        if base(text)["input_ids"] != other(text)["input_ids"]:
            return f"it tokenizes {text[:30]!r}... differently"
    return None


def check_tokenizers(included: list[IncludedModel], base_tokenizer: Any, base_name: str, *,
                     trust_remote_code: bool = False) -> None:
    """Fail (one line) unless every included model has ``base_tokenizer``'s tokenization."""
    from transformers import AutoTokenizer

    from replaceme.loading import resolve_model_path

    for entry in included:
        path = resolve_model_path(entry.path)
        try:
            other = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ReplacemeError(f"--include-model {entry.label}: cannot load its tokenizer from {entry.path} "
                                 f"({first_line(exc)})") from None
        why = tokenizer_difference(base_tokenizer, other)
        if why:
            raise ReplacemeError(f"--include-model {entry.label}: {why} from {base_name}'s; "
                                 "included models must share the base model's tokenizer to be comparable")


def evaluate_included(entry: IncludedModel, key: str, tokenizer: Any, evaluation: Any, base_layers: int, *,
                      device: str, dtype: str, trust_remote_code: bool, offload: bool = False) -> Any:
    """Load one included model, evaluate it with the shared spec, and return its row
    (with ``offload``, layer by layer from its checkpoint, as the compared model).

    ``layers`` is the base model's decoder layer count minus this model's
    (0 for width pruning). A model that fails to load or evaluate gets a row
    with the error, as a failing method does.
    """
    from replaceme.compare.results import Row
    from replaceme.evaluation import evaluate
    from replaceme.loading import load_model
    from replaceme.resources import Meter

    row = Row(label=entry.label, method=EXTERNAL, layers=0, key=key, details={"path": entry.path})
    model = None
    try:
        with Meter() as meter:
            offloaded = None
            if offload:
                from replaceme.offload import load_offloaded

                from replaceme.registry import adapter_for

                offloaded, _ = load_offloaded(entry.path, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                                              adapter_for=adapter_for)
                model = offloaded.model
            else:
                model, _ = load_model(entry.path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
            layers = getattr(model.config, "num_hidden_layers", None)
            t0 = time.perf_counter()
            result = evaluate(model, tokenizer, evaluation, offloaded=offloaded)
            row.eval_seconds = time.perf_counter() - t0
        row.record(result)
        row.params = sum(p.numel() for p in model.parameters())
        row.num_layers = layers
        row.layers = base_layers - layers if isinstance(layers, int) else 0
        row.peak_rss_mb = meter.usage.peak_rss / 2**20
        row.peak_cuda_mb = None if meter.usage.peak_cuda is None else meter.usage.peak_cuda / 2**20
    except (ReplacemeError, RuntimeError, ValueError, OSError) as exc:
        row.error = f"{type(exc).__name__}: {first_line(str(exc))}"
        log.error("included model %s failed: %s", entry.label, row.error)
    finally:
        del model
    return row
