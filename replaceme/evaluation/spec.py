"""What to evaluate (:class:`EvalSpec`) and what came out (:class:`EvalResult`).

Plain data, no torch: ``compare`` builds one spec and evaluates every pruned
model with it, so every method is measured on the same text, tasks and seeds.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from replaceme.errors import ReplacemeError, unknown

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class EvalSpec:
    """An evaluation: perplexity sources and lm-eval tasks, with their settings.

    Perplexity (our own batched sliding-window implementation, see
    :mod:`replaceme.evaluation.perplexity`):

    Attributes:
        ppl: text sources to measure perplexity on, each written as for
            :class:`replaceme.data.TextSource` (a file, or a hub dataset
            ``name:config``, optionally sliced ``[start:end]``).
        ppl_split: split of hub datasets in ``ppl`` (files ignore it).
        ppl_column: text column of ``.jsonl``/``.csv``/``.parquet``/hub sources.
        context_length: tokens per window, BOS included when the tokenizer has one.
        stride: corpus tokens between the starts of consecutive windows; ``None``
            (and anything larger) means non-overlapping windows. A smaller
            stride gives every scored token more context (each window scores only
            the tokens the previous window did not).
        ppl_batch_size: windows per forward pass.
        max_ppl_tokens: score at most this many tokens per source (the first ones).

    lm-eval tasks (run in memory on the model, see
    :mod:`replaceme.evaluation.lm_eval_runner`):

    Attributes:
        tasks: lm-eval task (or group/tag) names.
        tasks_dir: a directory of extra lm-eval YAML tasks.
        task_data: data directory of the offline task pack; when set (or when
            ``$REPLACEME_TASK_DATA`` is), the pack's task names (``boolq``,
            ``piqa``, ``hellaswag``, ...) are evaluated from these local copies.
        num_fewshot: few-shot examples per prompt; ``None`` = each task's default (0).
        limit: documents per task (an int, or a fraction < 1); ``None`` = all.
        batch_size: lm-eval batch size (requests per forward pass).
        seed: seed for lm-eval's python/numpy/torch and few-shot sampling.
        bootstrap_iters: bootstrap resamples for the stderr of perplexities (ours,
            over scored batches, and lm-eval's, e.g. LAMBADA's), vectorised
            (:mod:`replaceme.evaluation.bootstrap`); lm-eval's default, 100,000.
            Accuracies use a closed form. 0 = no stderr.

    Where it runs:

    Attributes:
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (keep the dtype the model was loaded in), ``float32``,
            ``bfloat16`` or ``float16``.
    """

    ppl: list[str] = field(default_factory=list)
    ppl_split: str = "test"
    ppl_column: str = "text"
    context_length: int = 256
    stride: int | None = None
    ppl_batch_size: int = 8
    max_ppl_tokens: int | None = None
    tasks: list[str] = field(default_factory=list)
    tasks_dir: str | None = None
    task_data: str | None = None
    num_fewshot: int | None = None
    limit: int | float | None = None
    batch_size: int = 8
    seed: int = 1234
    bootstrap_iters: int = 100_000
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        self.ppl = list(self.ppl)
        self.tasks = list(self.tasks)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ReplacemeError` (one line) for an impossible setting."""
        if not _DEVICE.match(self.device):
            raise unknown("device", self.device, DEVICES)
        if self.dtype not in DTYPES:
            raise unknown("dtype", self.dtype, DTYPES)
        _positive("context_length", self.context_length, minimum=2)
        _positive("ppl_batch_size", self.ppl_batch_size)
        _positive("batch_size", self.batch_size)
        if self.stride is not None:
            _positive("stride", self.stride)
        if self.max_ppl_tokens is not None:
            _positive("max_ppl_tokens", self.max_ppl_tokens)
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ReplacemeError(f"num_fewshot must be >= 0, got {self.num_fewshot}")
        if self.limit is not None and not self.limit > 0:
            raise ReplacemeError(f"limit must be > 0, got {self.limit}")
        if self.bootstrap_iters < 0:
            raise ReplacemeError(f"bootstrap_iters must be >= 0, got {self.bootstrap_iters}")

    @property
    def is_empty(self) -> bool:
        """True when there is nothing to evaluate."""
        return not self.ppl and not self.tasks

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy of every setting (for provenance)."""
        return dataclasses.asdict(self)


def _positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ReplacemeError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass
class EvalResult:
    """The outcome of :func:`replaceme.evaluation.evaluate`.

    Attributes:
        metrics: one number per measurement: ``"ppl:<source>"`` -> perplexity,
            ``"<task>"`` -> the task's primary metric (see ``task_metrics``).
        task_metrics: ``task -> name of its primary metric`` (``acc``, ``acc_norm``, ...).
        stderr: standard error per measurement, when known (lm-eval's for a
            task's primary metric; the bootstrap's for perplexity).
        chance: task -> its chance level (the expected score of a uniform
            guess among each document's choices; 0 for tasks without choices).
        tokens: ``"ppl:<source>" -> tokens scored``.
        details: per measurement, everything else: ``nll``/``tokens``/``windows``
            for perplexity; every metric and stderr lm-eval reported for a task.
        seconds: wall time per stage (``"ppl:<source>"``, ``"lm_eval"``) and ``"total"``.
        provenance: the spec, the device and dtype used, library versions.
        lm_eval: lm-eval's own results (``results``, ``configs``, ``versions``,
            ``n-shot``, ``n-samples``), JSON-able; ``None`` without tasks.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    task_metrics: dict[str, str] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    lm_eval: dict[str, Any] | None = None

    def rows(self) -> list[tuple[str, str, float]]:
        """``(name, metric, value)`` per measurement, for tables."""
        out = []
        for name, value in self.metrics.items():
            metric = "ppl" if name.startswith("ppl:") else self.task_metrics.get(name, "")
            out.append((name, metric, value))
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return dataclasses.asdict(self)
