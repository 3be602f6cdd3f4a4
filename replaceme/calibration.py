"""Calibration data: text records tokenised into padded batches with masks.

Pad positions are ``False`` in :attr:`CalibrationData.masks`, and every
statistic of the shared pass ignores them.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

from replaceme.data.texts import TextSource, load_texts
from replaceme.errors import ReplacemeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationSpec:
    """How to build the calibration set.

    Attributes:
        source: file path or hub dataset (see :mod:`replaceme.data.texts`),
            optionally with a ``[start:end]`` record slice.
        column: text column of ``.jsonl``/``.csv``/``.parquet``/hub data.
        split: hub dataset split.
        samples: number of records used (after a seeded shuffle, or the
            first ones in file order with ``order="file"``).
        max_length: tokens per sequence (longer records are truncated).
        batch_size: sequences per forward pass.
        seed: seeds the shuffle and every sample drawn later.
        chat_template: format conversation records (lists of
            ``{"from"|"role", "value"|"content"}``) with the tokenizer's chat
            template: ``auto`` does so when records are conversations.
        order: ``shuffle`` (seeded) or ``file``: the first ``samples`` records,
            batched in file order, as the ReplaceMe reference does.
        drop_last: drop a last batch smaller than ``batch_size`` (the
            reference's ``DataLoader(drop_last=True)``).
        holdout_fraction: at most this fraction of the calibration batches is
            held out from every fit (LSTSQ sums, cosine and LLM-Streamline
            training) and used only for held-out diagnostics; 0 fits on every
            batch, as the reference does. The token budget of the pass bounds
            it too (see :func:`replaceme.stats.collect.split_batches`).
    """

    source: str
    column: str = "text"
    split: str = "train"
    samples: int = 256
    max_length: int = 512
    batch_size: int = 8
    seed: int = 0
    chat_template: Literal["auto", "on", "off"] = "auto"
    order: Literal["shuffle", "file"] = "shuffle"
    drop_last: bool = False
    holdout_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("samples", "max_length", "batch_size"):
            if getattr(self, name) < 1:
                raise ReplacemeError(f"calibration {name.replace('_', '-')} must be >= 1")
        if self.order not in ("shuffle", "file"):
            raise ReplacemeError(f"calibration order must be 'shuffle' or 'file', got {self.order!r}")
        if not 0 <= self.holdout_fraction < 1:  # also False for NaN
            raise ReplacemeError(f"--holdout-fraction must be in [0, 1), got {self.holdout_fraction}")

    @property
    def text_source(self) -> TextSource:
        return TextSource(self.source, column=self.column, split=self.split)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["source_info"] = self.text_source.describe()
        return out


@dataclass
class CalibrationData:
    """Tokenised calibration batches.

    Attributes:
        input_ids: one ``LongTensor [B, T]`` per batch (right-padded).
        masks: matching ``BoolTensor [B, T]``, False at pad positions.
        spec: the spec it was built from.
    """

    input_ids: list[Any]
    masks: list[Any]
    spec: CalibrationSpec

    @property
    def num_batches(self) -> int:
        return len(self.input_ids)

    @property
    def num_tokens(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks))


_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _as_messages(record: Any) -> list[dict[str, str]] | None:
    if not isinstance(record, list) or not record or not all(isinstance(m, dict) for m in record):
        return None
    messages = []
    for m in record:
        role = _ROLE.get(str(m.get("from", m.get("role", "user"))), "user")
        messages.append({"role": role, "content": str(m.get("value", m.get("content", "")))})
    return messages


def format_record(record: Any, tokenizer: Any, mode: str) -> str:
    """Turn one record into text: conversations through the chat template."""
    messages = _as_messages(record)
    if messages is None or mode == "off":
        if mode == "on" and messages is None:
            raise ReplacemeError("--chat-template on, but the calibration records are not conversations")
        return record if isinstance(record, str) else str(record)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


#: characters per token assumed for the first cut of a long record (the cut doubles until it holds enough tokens)
CHARS_PER_TOKEN = 8
#: tokens the cut must hold beyond the budget, so the tokens kept do not depend on where the cut fell
MARGIN_TOKENS = 16


def encode_truncated(tokenizer: Any, text: str, max_length: int) -> list[int]:
    """The first ``max_length`` token ids of ``text``, as ``tokenizer(text, truncation=True,
    max_length=max_length)`` gives them, without tokenizing a long record whole.

    A record longer than ``(max_length + MARGIN_TOKENS) * CHARS_PER_TOKEN`` characters is
    cut to that many first, and the cut doubled until it holds at least
    ``max_length + MARGIN_TOKENS`` tokens (or the whole record): the tokens kept lie well
    before the cut, so they are those of the whole record, and the tokenizer reads a
    bounded prefix (a 15 MB record costs what a few kB do).
    """
    limit = (max_length + MARGIN_TOKENS) * CHARS_PER_TOKEN
    while len(text) > limit:
        head = text[:limit]
        enough = max_length + MARGIN_TOKENS  # counted with truncation: no warning about long sequences
        if len(tokenizer(head, truncation=True, max_length=enough)["input_ids"]) >= enough:
            return tokenizer(head, truncation=True, max_length=max_length)["input_ids"]
        limit *= 2
    return tokenizer(text, truncation=True, max_length=max_length)["input_ids"]


def calibration_texts(spec: CalibrationSpec, tokenizer: Any = None, *, warn: bool = True) -> list[str]:
    """The texts the calibration set is made of, in batch order: ``spec.samples`` records
    (shuffled with the seed, or in file order), conversations through the tokenizer's chat
    template, a short last batch dropped with ``drop_last``. With no ``tokenizer`` (before
    the model loads) conversations are joined as ``role: content`` lines: the refusals
    (``--chat-template on`` on plain records, no full batch) are the same; ``warn`` logs
    the records dropped.
    """
    records = load_texts(spec.text_source)
    order = list(range(len(records)))
    if spec.order == "shuffle":
        random.Random(spec.seed).shuffle(order)
    texts = [format_record(records[i], tokenizer, spec.chat_template) for i in order[: spec.samples]]
    if spec.drop_last and len(texts) % spec.batch_size:
        kept = len(texts) - len(texts) % spec.batch_size
        if kept == 0:
            raise ReplacemeError(
                f"calibration: {len(texts)} records make no full batch of {spec.batch_size} (drop_last)"
            )
        if warn:
            log.warning("calibration: the last %d record(s) do not fill a batch of %d and are dropped, as the "
                        "reference does", len(texts) - kept, spec.batch_size)
        texts = texts[:kept]
    return texts


def build_calibration(spec: CalibrationSpec, tokenizer: Any) -> CalibrationData:
    """Load, shuffle (seeded; or keep file order), take ``spec.samples`` records and tokenise them.

    Batches are consecutive runs of ``batch_size`` records in that order,
    right-padded; with ``drop_last`` a short last batch is dropped.

    Raises:
        ReplacemeError: missing/empty source, missing column, or no tokens.
    """
    import torch

    texts = calibration_texts(spec, tokenizer)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    encoded = [encode_truncated(tokenizer, t, spec.max_length) for t in texts]
    encoded = [ids for ids in encoded if len(ids) > 0]
    if not encoded:
        raise ReplacemeError(f"calibration source {spec.source} gave no tokens")
    input_ids, masks = [], []
    for start in range(0, len(encoded), spec.batch_size):
        chunk = encoded[start : start + spec.batch_size]
        width = max(len(ids) for ids in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = True
        input_ids.append(ids)
        masks.append(mask)
    return CalibrationData(input_ids=input_ids, masks=masks, spec=spec)
