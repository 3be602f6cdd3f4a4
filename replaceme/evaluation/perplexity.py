"""Batched sliding-window perplexity of a causal LM on a text corpus.

The protocol, stated once:

1. **Corpus.** The records of a source are joined with ``"\\n\\n"`` and
   tokenised once, without special tokens (so no BOS inside the text).
2. **Windows.** Fixed windows of ``context_length`` tokens. When the tokenizer
   has a BOS token it is prepended to *every* window (a window then holds
   ``context_length - 1`` corpus tokens), and every corpus token can be
   scored, the first one included. Without BOS a window's first token has no
   context and is never scored.
3. **Stride** (as in the Hugging Face perplexity guide): window starts are
   ``stride`` corpus tokens apart, and each window scores only the tokens the
   previous window did not, so every token is scored exactly once, with
   between ``window - stride`` and ``window`` tokens of context. The default
   stride equals the window (non-overlapping windows, fastest).
4. **Batches without pads in the loss.** Windows are batched, right-padded
   with an attention mask; the last window may be shorter. Pad positions,
   the BOS and the context-only prefix of a window never enter the loss.
5. **Statistics.** Log-softmax in float32, per-token NLL summed in float64;
   ``ppl = exp(total NLL / tokens scored)``. A NaN or Inf loss is an error.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from replaceme.console import track
from replaceme.evaluation.bootstrap import ratio_stderr
from replaceme.errors import ReplacemeError
from replaceme.evaluation.device import model_device

log = logging.getLogger(__name__)

#: How records are joined before tokenisation.
RECORD_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of one corpus.

    Attributes:
        ppl: ``exp(nll)``.
        nll: mean negative log-likelihood per scored token, in nats.
        tokens: tokens scored.
        windows: forward windows used.
        stderr: bootstrap standard error of ``ppl`` over the scored batches
            (:func:`replaceme.evaluation.bootstrap.ratio_stderr`); None with
            fewer than two batches or ``bootstrap_iters=0``.
    """

    ppl: float
    nll: float
    tokens: int
    windows: int
    stderr: float | None = None


@dataclass(frozen=True)
class Window:
    """Corpus tokens ``[start, end)`` in one forward pass; ``[score_from, end)`` are scored."""

    start: int
    end: int
    score_from: int


def bos_token_id(tokenizer: Any) -> int | None:
    """The tokenizer's BOS id, or ``None`` when it has none."""
    return getattr(tokenizer, "bos_token_id", None)


def tokenize_corpus(tokenizer: Any, texts: Sequence[str], max_tokens: int | None = None) -> list[int]:
    """Token ids of ``"\\n\\n".join(texts)``, without special tokens.

    With ``max_tokens``, only a prefix of the text long enough for that many
    tokens is tokenised (and the ids cut to ``max_tokens``), so a cap on a big
    corpus stays cheap; the ids equal those of tokenising everything.
    """
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ReplacemeError(f"perplexity needs plain text records; record {i} is a {type(text).__name__}")
    corpus = RECORD_SEPARATOR.join(texts)
    if max_tokens is None:
        return _encode(tokenizer, corpus)
    # Tokenise a growing prefix; drop the prefix's last few tokens, which a
    # cut through a word could change, before deciding it is long enough.
    chars = 8 * max_tokens + 64
    while True:
        ids = _encode(tokenizer, corpus[:chars])
        if chars >= len(corpus):
            return ids[:max_tokens]
        if len(ids) - 8 >= max_tokens:
            return ids[:max_tokens]
        chars *= 2


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def plan_windows(n_tokens: int, window: int, stride: int, first_scored: int) -> list[Window]:
    """Sliding windows over ``n_tokens`` corpus tokens.

    Args:
        n_tokens: corpus length.
        window: corpus tokens per window (the context length less the BOS, if any).
        stride: tokens between window starts, ``1 <= stride <= window``.
        first_scored: offset, inside a window, of the first token that can be
            scored: 0 with a BOS in front, 1 without.

    Returns:
        Windows such that every corpus token from ``first_scored`` on is
        scored exactly once (without BOS, also each window's first token is
        only context, so a non-overlapping stride leaves those unscored).
    """
    if not 1 <= stride <= window:
        raise ValueError(f"stride {stride} must be in [1, {window}]")
    windows: list[Window] = []
    scored_until = 0
    start = 0
    while scored_until < n_tokens:
        end = min(start + window, n_tokens)
        score_from = max(scored_until, start + first_scored)
        if score_from < end:
            windows.append(Window(start, end, score_from))
        scored_until = end
        start += stride
    return windows


def batch_windows(
    tokens: torch.Tensor, windows: Sequence[Window], bos: int | None, pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Build one right-padded batch.

    Args:
        tokens: the corpus, ``[N]`` int64.
        windows: the windows of this batch, ``B`` of them.
        bos: BOS id prepended to each window, or ``None``.
        pad_id: filler id for pad positions (masked out everywhere).

    Returns:
        ``input_ids`` ``[B, T]``, ``attention_mask`` ``[B, T]`` (1 = real
        token) and ``targets`` ``[B, T]`` (bool: the token at this position
        is scored, predicted from the logits one position earlier).
    """
    offset = 0 if bos is None else 1
    length = max(w.end - w.start for w in windows) + offset
    input_ids = torch.full((len(windows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), length), dtype=torch.long)
    targets = torch.zeros((len(windows), length), dtype=torch.bool)
    for row, w in enumerate(windows):
        n = w.end - w.start + offset
        if bos is not None:
            input_ids[row, 0] = bos
        input_ids[row, offset:n] = tokens[w.start : w.end]
        attention_mask[row, :n] = 1
        targets[row, w.score_from - w.start + offset : n] = True
    return input_ids, attention_mask, targets


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


#: most logit bytes one forward of :func:`batch_nll` may produce (CPU, CUDA); a batch
#: whose logits would exceed it runs in chunks of rows, so that evaluating a model with
#: a large vocabulary costs a bounded amount of memory above the model.
LOGITS_BYTES = {"cpu": 32 * 2**20, "cuda": 1024 * 2**20}


#: ``forward(rows, **kwargs) -> logits`` of a slice of a batch's rows (see :func:`batch_nll`)
Forward = Callable[..., torch.Tensor]


@torch.no_grad()
def batch_nll(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor,
    forward: Forward | None = None,
) -> tuple[float, int]:
    """Summed NLL (float64) and count of the target tokens of one batch.

    Rows run in chunks whose logits fit :data:`LOGITS_BYTES`; the per-token
    losses are summed in the same order as for one chunk.

    Args:
        input_ids, attention_mask, targets: ``[B, T]`` as from :func:`batch_windows`,
            on the model's device. ``targets[:, 0]`` must be False.
        forward: ``forward(rows: slice, **kwargs)`` gives the logits of those rows
            (default: ``model``'s forward on them; ``--offload`` gives the engine's).

    Returns:
        ``(sum of -log p(token | prefix) over targets, number of targets)``.
    """
    if forward is None:
        def forward(rows: slice, **kwargs: Any) -> torch.Tensor:
            return model(input_ids=input_ids[rows], attention_mask=attention_mask[rows], use_cache=False,
                         **kwargs).logits

    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 1
    row_bytes = input_ids.shape[1] * int(vocab) * 4
    budget = LOGITS_BYTES["cuda" if input_ids.device.type == "cuda" else "cpu"]
    rows = max(1, budget // max(row_bytes, 1))
    parts = [_token_nll(model, input_ids[i : i + rows], targets[i : i + rows], forward, slice(i, i + rows))
             for i in range(0, input_ids.shape[0], rows)]
    nll = torch.cat(parts)
    total = nll.double().sum()
    if not torch.isfinite(total):
        raise FloatingPointError("non-finite loss")
    return float(total), int(nll.numel())


def _token_nll(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, forward: Forward,
               rows: slice) -> torch.Tensor:
    """``-log p(token | prefix)`` of every target token of ``[b, T]`` rows, row-major: ``[n]``."""
    if not bool(targets.any()):
        return torch.zeros(0, device=input_ids.device)
    length = input_ids.shape[1]
    # Logits are needed only from one position before the first target on.
    first = int(targets.any(dim=0).nonzero()[0]) - 1
    kwargs: dict[str, Any] = {}
    if first > 0 and _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = length - first
    else:
        first = 0
    logits = forward(rows, **kwargs)
    # logits[:, i] predicts input_ids[:, first + i + 1]
    logits = logits[:, : length - 1 - first]  # [B, T-1-first, V]
    mask = targets[:, first + 1 :]  # [B, T-1-first]
    picked = logits[mask].float()  # [n, V]
    del logits
    labels = input_ids[:, first + 1 :][mask]  # [n]
    # -log softmax(z)[y] = logsumexp(z) - z[y], without a second [n, V] tensor for log_softmax
    return torch.logsumexp(picked, dim=-1) - picked.gather(1, labels[:, None]).squeeze(1)  # [n]


def max_positions(model: torch.nn.Module) -> int | None:
    """The model's maximum sequence length from its config, when it states one."""
    return config_positions(getattr(model, "config", None))


def config_positions(config: Any) -> int | None:
    """The maximum sequence length a model config states (None when it states none)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def plan_corpus(tokenizer: Any, texts: Sequence[str], limit: int | None, *, context_length: int, stride: int | None,
                max_tokens: int | None, add_bos: bool | None, description: str,
                warn: bool = True) -> tuple[list[int], list[Window], int | None]:
    """The corpus tokens, the windows that score them and the BOS id (arguments as
    :func:`perplexity`'s; ``limit``: the model's maximum positions). Needs no model, so a
    corpus too short to score is refused before the model loads (:mod:`replaceme.preflight`)."""
    if limit is not None and context_length > limit:
        if warn:
            log.warning("context length %d exceeds the model's %d positions; using %d", context_length, limit, limit)
        context_length = limit
    bos = bos_token_id(tokenizer) if add_bos in (None, True) else None
    if add_bos and bos is None:
        raise ReplacemeError("add_bos was asked for, but the tokenizer has no BOS token")
    window = context_length - (1 if bos is not None else 0)
    if window < 1:
        raise ReplacemeError(f"context length {context_length} leaves no room for text")
    stride = window if stride is None else min(stride, window)
    ids = tokenize_corpus(tokenizer, texts, max_tokens)
    windows = plan_windows(len(ids), window, stride, 0 if bos is not None else 1)
    if not windows:
        raise ReplacemeError(f"{description}: the text has {len(ids)} token(s), too few to score")
    return ids, windows, bos


def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    context_length: int = 256,
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    add_bos: bool | None = None,
    description: str = "perplexity",
    scorer: Callable[[Sequence[WindowBatch], str], Iterator[tuple[float, int] | None]] | None = None,
    bootstrap_iters: int = 0,
) -> PerplexityResult:
    """Perplexity of ``model`` on the concatenation of ``texts`` (see the module docstring).

    Args:
        model: a causal LM (``model(input_ids, attention_mask).logits``), in
            eval mode on its device; it is not moved.
        tokenizer: its tokenizer.
        texts: the records of the corpus.
        context_length: tokens per window, BOS included; capped at the
            model's maximum positions.
        stride: corpus tokens between window starts; ``None`` or larger than
            a window = non-overlapping.
        batch_size: windows per forward pass.
        max_tokens: use only the first ``max_tokens`` corpus tokens.
        add_bos: prepend BOS to every window; ``None`` = when the tokenizer has one.
        description: progress bar label.
        scorer: scores the batches instead of :func:`score_batches` (``--offload``
            passes the layer-by-layer engine's, which needs all of them at once).
        bootstrap_iters: resamples of the scored batches for ``stderr`` (0: none).

    Raises:
        ReplacemeError: corpus too short, or a NaN/Inf loss.
    """
    ids, windows, bos = plan_corpus(tokenizer, texts, max_positions(model), context_length=context_length,
                                    stride=stride, max_tokens=max_tokens, add_bos=add_bos, description=description)
    tokens = torch.tensor(ids, dtype=torch.long)
    batches = [batch_windows(tokens, batch, bos) for batch in _chunks(windows, batch_size)]
    sums: list[float] = []
    counts: list[int] = []
    scores = score_batches(model, batches, description) if scorer is None else scorer(batches, description)
    for number, scored in enumerate(scores):
        if scored is None:
            raise ReplacemeError(
                f"{description}: NaN/Inf loss in batch {number + 1} of {len(batches)} "
                "(the model's logits overflow; try --dtype float32)"
            )
        sums.append(scored[0])
        counts.append(scored[1])
    mean = sum(sums) / sum(counts)
    ppl = math.exp(mean) if mean < 709.0 else math.inf
    stderr = ratio_stderr(sums, counts, bootstrap_iters) if math.isfinite(ppl) else None
    return PerplexityResult(ppl=ppl, nll=mean, tokens=sum(counts), windows=len(windows), stderr=stderr)


#: one batch of windows: ``(input_ids, attention_mask, targets)``, each ``[B, T]`` (see :func:`batch_windows`)
WindowBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def score_batches(model: torch.nn.Module, batches: Sequence[WindowBatch],
                  description: str) -> Iterator[tuple[float, int] | None]:
    """``(summed NLL, tokens)`` of each batch through ``model``'s own forward, in
    order (None for a batch whose loss is not finite)."""
    device = model_device(model)
    for input_ids, attention_mask, targets in track(batches, description):
        try:
            yield batch_nll(model, input_ids.to(device), attention_mask.to(device), targets.to(device))
        except FloatingPointError:
            yield None


def _chunks(items: Sequence[Window], size: int) -> Iterator[list[Window]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])
