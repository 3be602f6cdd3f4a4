"""Options shared by several commands (one definition each)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]


def calibration_options(f: F) -> F:
    """``--calib`` and the options that shape the calibration set."""
    decorators = [
        click.option("--calib", "calib", metavar="PATH_OR_DATASET",
                     help="Calibration text: a .txt/.jsonl/.json/.parquet/.csv file or a hub dataset "
                          "('name' or 'name:config'); append [start:end] to take a slice of records."),
        click.option("--calib-column", default="text", show_default=True, help="Text column of structured data."),
        click.option("--calib-split", default="train", show_default=True, help="Split of a hub dataset."),
        click.option("--calib-samples", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Number of records used (after a seeded shuffle, or the first ones with --calib-order file)."),
        click.option("--calib-order", "order", type=click.Choice(["shuffle", "file"]), default="shuffle", show_default=True,
                     help="shuffle: a seeded random choice of records; file: the first records, batched in file "
                          "order (as the ReplaceMe reference does)."),
        click.option("--calib-drop-last", "drop_last", is_flag=True,
                     help="Drop a last batch smaller than --batch-size (as the ReplaceMe reference's DataLoader does)."),
        click.option("--holdout-fraction", type=click.FloatRange(min=0, max=1, max_open=True), default=0.1,
                     show_default=True,
                     help="Fraction of calibration batches (at most 8192 tokens) held out of every fit and used "
                          "for held-out diagnostics; 0 fits on all of them, as the ReplaceMe reference does."),
        click.option("--max-length", type=click.IntRange(min=1), default=512, show_default=True,
                     help="Tokens per calibration sequence."),
        click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Sequences per forward pass."),
        click.option("--chat-template", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                     help="Format conversation records with the tokenizer's chat template."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for shuffling, samples and training."),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def model_options(f: F) -> F:
    """``--device``, ``--dtype`` and ``--trust-remote-code``."""
    decorators = [
        click.option("--device", default="auto", show_default=True, help="auto (CUDA if available), cpu, cuda, cuda:N."),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                     show_default=True, help="auto: bfloat16 on CUDA, float32 on CPU."),
        click.option("--trust-remote-code", is_flag=True, help="Allow custom model code from the hub (off by default)."),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def calibration_spec(calib: str | None, *, calib_column: str, calib_split: str, calib_samples: int,
                     max_length: int, batch_size: int, chat_template: str, seed: int, order: str = "shuffle",
                     holdout_fraction: float = 0.1, drop_last: bool = False) -> Any:
    from replaceme.calibration import CalibrationSpec
    from replaceme.errors import ReplacemeError

    if not calib:
        raise ReplacemeError("--calib is required (a text file or a hub dataset)")
    return CalibrationSpec(calib, column=calib_column, split=calib_split, samples=calib_samples,
                           max_length=max_length, batch_size=batch_size, seed=seed, chat_template=chat_template,
                           order=order, holdout_fraction=holdout_fraction, drop_last=drop_last)


def parse_kv(pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """``-o key value`` pairs to a dict (keys may use - or _)."""
    return {k.replace("-", "_"): v for k, v in pairs}
