"""The healing text: records tokenised and packed into fixed-length sequences.

Records are tokenised one by one (with the tokenizer's special tokens), each ended
by EOS, concatenated and cut into ``seq_len``-token sequences (a short tail is
kept, padded, only when there is no full sequence). A seeded choice of sequences is
held out for the held-out loss; the others train.

By default the text is the calibration records the compensation was fit on: the
calibration set rebuilt from its spec (deterministic), minus the batches the pass
held out from every fit. Neither the held-out calibration batches nor evaluation
text (``--ppl``) is ever used.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from typing import Any

import torch

from replaceme.calibration import CalibrationSpec, build_calibration, format_record
from replaceme.data.texts import load_texts
from replaceme.errors import ReplacemeError
from replaceme.healer import HealData

log = logging.getLogger(__name__)


@dataclass
class HealBatches:
    """Packed healing sequences.

    Attributes:
        train, train_mask: ``[N, seq_len]`` token ids and bool mask (False at pads).
        heldout, heldout_mask: ``[M, seq_len]``, for the held-out loss only.
        describe: JSON-able description of the source (for ``pruning.json``).
    """

    train: torch.Tensor
    train_mask: torch.Tensor
    heldout: torch.Tensor
    heldout_mask: torch.Tensor
    describe: dict[str, Any]

    @property
    def train_tokens(self) -> int:
        return int(self.train_mask.sum())

    def digest(self) -> str:
        """Content hash of every sequence (part of a checkpoint's identity)."""
        h = hashlib.sha256()
        for t in (self.train, self.train_mask, self.heldout, self.heldout_mask):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:24]


def pack(token_lists: list[list[int]], seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``token_lists`` and cut into ``[N, seq_len]`` rows (and the mask).

    The last partial row is dropped when at least one full row exists, else padded.
    """
    stream = [t for ids in token_lists for t in ids]
    if len(stream) < 2:
        raise ReplacemeError("the healing text gave fewer than 2 tokens")
    rows = max(1, len(stream) // seq_len)
    ids = torch.full((rows, seq_len), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, seq_len), dtype=torch.bool)
    for r in range(rows):
        chunk = stream[r * seq_len:(r + 1) * seq_len]
        ids[r, :len(chunk)] = torch.tensor(chunk, dtype=torch.long)
        mask[r, :len(chunk)] = True
    return ids, mask


def _ids_of_records(records: list[Any], tokenizer: Any, chat_template: str = "auto") -> list[list[int]]:
    eos = tokenizer.eos_token_id
    out = []
    for record in records:
        ids = list(tokenizer(format_record(record, tokenizer, chat_template))["input_ids"])
        if ids and eos is not None and ids[-1] != eos:
            ids.append(eos)
        if ids:
            out.append(ids)
    return out


def calibration_fit_records(spec: CalibrationSpec, tokenizer: Any, request: Any) -> list[list[int]]:
    """Token ids of the calibration records the fit used: every batch the pass did not hold out."""
    from replaceme.pipeline import gather_stats
    from replaceme.stats.collect import plan_batches

    calib = build_calibration(spec, tokenizer)
    holdout, _ = plan_batches(calib, request, gather_stats.__kwdefaults__["holdout_tokens"])
    eos = tokenizer.eos_token_id
    out = []
    for b in range(calib.num_batches):
        if b in holdout:
            continue
        for ids, mask in zip(calib.input_ids[b], calib.masks[b]):
            seq = ids[mask].tolist()
            if seq and eos is not None and seq[-1] != eos:
                seq.append(eos)
            out.append(seq)
    return out


def build_heal_batches(data: HealData, tokenizer: Any, *, seq_len: int, heldout: int, seed: int,
                       calibration: CalibrationSpec | None = None, request: Any = None) -> HealBatches:
    """Load, tokenise and pack the healing text, and hold out ``heldout`` sequences.

    Raises:
        ReplacemeError: no source (no ``--heal-data`` and no calibration), or too
            little text for one training sequence besides the held-out ones.
    """
    if data.source is not None:
        records = load_texts(data.text_source)
        order = list(range(len(records)))
        random.Random(seed).shuffle(order)
        if data.samples is not None:
            order = order[:data.samples]
        token_lists = _ids_of_records([records[i] for i in order], tokenizer)
        describe = {**data.to_dict(), "records": len(order)}
    elif calibration is not None:
        token_lists = calibration_fit_records(calibration, tokenizer, request)
        describe = {**data.to_dict(), "calibration": calibration.to_dict(), "records": len(token_lists)}
    else:
        raise ReplacemeError("healing needs text: give --heal-data (or calibration data, used by default)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids, mask = pack(token_lists, seq_len, pad_id)
    if ids.shape[0] <= heldout:
        raise ReplacemeError(
            f"the healing text makes {ids.shape[0]} sequence(s) of {seq_len} tokens, not more than the {heldout} "
            "held out: give more text (--heal-data) or lower -o heal.heldout / -o heal.seq_len")
    perm = torch.randperm(ids.shape[0], generator=torch.Generator().manual_seed(seed))
    held, train = perm[:heldout].sort().values, perm[heldout:].sort().values
    describe.update(sequences=int(ids.shape[0]), seq_len=seq_len, heldout_sequences=heldout,
                    train_tokens=int(mask[train].sum()))
    return HealBatches(ids[train], mask[train], ids[held], mask[held], describe)
