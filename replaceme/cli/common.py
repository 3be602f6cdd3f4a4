"""Options shared by several commands (one definition each)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from replaceme.errors import shown

F = Callable[..., Any]

#: the largest count an option accepts (sizes, lengths, budgets): far above any real use, within 32 bits
INT_MAX = 2**31 - 1
#: seeds reach numpy, which takes 32-bit seeds
SEED = click.IntRange(0, 2**32 - 1)


#: an integer that is checked later against the model (e.g. --layers), bounded so it cannot overflow
BOUNDED_INT = click.IntRange(-INT_MAX, INT_MAX)


def count(minimum: int = 1, maximum: int = INT_MAX) -> click.IntRange:
    """An integer option type with bounds on both sides (no unbounded ``int`` options)."""
    return click.IntRange(minimum, maximum)


class FiniteFloat(click.ParamType):
    """A float option that refuses NaN and ±Inf (and optional bounds)."""

    name = "float"

    def __init__(self, minimum: float | None = None, maximum: float | None = None, max_open: bool = False):
        self.minimum, self.maximum, self.max_open = minimum, maximum, max_open

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            self.fail(f"{shown(value)} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{shown(value)} is not a finite number", param, ctx)
        above = self.maximum is not None and (number >= self.maximum if self.max_open else number > self.maximum)
        if (self.minimum is not None and number < self.minimum) or above:
            bound = f"below {self.maximum}" if self.max_open else f"at most {self.maximum}"
            self.fail(f"{shown(value)} is not between {self.minimum} and {self.maximum} ({bound})", param, ctx)
        return number


def calibration_options(f: F) -> F:
    """``--calib`` and the options that shape the calibration set."""
    decorators = [
        click.option("--calib", "calib", metavar="PATH_OR_DATASET",
                     help="Calibration text: a .txt/.jsonl/.json/.parquet/.csv file or a hub dataset "
                          "('name' or 'name:config'); append [start:end] to take a slice of records."),
        click.option("--calib-column", default="text", show_default=True, help="Text column of structured data."),
        click.option("--calib-split", default="train", show_default=True, help="Split of a hub dataset."),
        click.option("--calib-samples", type=count(), default=256, show_default=True,
                     help="Number of records used (after a seeded shuffle, or the first ones with --calib-order file)."),
        click.option("--calib-order", "order", type=click.Choice(["shuffle", "file"]), default="shuffle", show_default=True,
                     help="shuffle: a seeded random choice of records; file: the first records, batched in file "
                          "order (as the ReplaceMe reference does)."),
        click.option("--calib-drop-last", "drop_last", is_flag=True,
                     help="Drop a last batch smaller than --batch-size (as the ReplaceMe reference's DataLoader does)."),
        click.option("--holdout-fraction", type=FiniteFloat(0, 1, max_open=True), default=0.1,
                     show_default=True,
                     help="Fraction of calibration batches (at most 8192 tokens) held out of every fit and used "
                          "for held-out diagnostics; 0 fits on all of them, as the ReplaceMe reference does."),
        click.option("--max-length", type=count(), default=512, show_default=True,
                     help="Tokens per calibration sequence."),
        click.option("--batch-size", type=count(), default=8, show_default=True,
                     help="Calibration sequences per forward pass of the statistics pass."),
        click.option("--chat-template", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                     help="Format conversation records with the tokenizer's chat template."),
        click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for shuffling, samples and training."),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def heal_options(multiple: bool = False):
    """``--heal NAME`` (repeatable with ``multiple``) and the healing text options."""

    def decorate(f: F) -> F:
        what = ("Also heal every method with healer NAME (repeatable): one more row per healer" if multiple
                else "Heal the pruned model with healer NAME (lora, transform, full; 'none': no healing even if "
                     "the method names a healer)")
        decorators = [
            click.option("--heal", "heal", metavar="NAME", multiple=multiple,
                         help=f"{what}; training options with -o (e.g. -o heal.steps 300), listed by "
                              "'replaceme methods'."),
            click.option("--heal-data", metavar="PATH_OR_DATASET",
                         help="Healing text (formats and [start:end] slices as --calib); default: the calibration "
                              "records the compensation was fit on (never the held-out ones)."),
            click.option("--heal-column", default="text", show_default=True, help="Text column of --heal-data."),
            click.option("--heal-split", default="train", show_default=True, help="Split of a hub --heal-data."),
            click.option("--heal-samples", type=count(), default=None,
                         help="Records of --heal-data used (after a seeded shuffle; default: all)."),
        ]
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return decorate


def heal_data_spec(heal_data: str | None, heal_column: str, heal_split: str, heal_samples: int | None) -> Any:
    """The :class:`replaceme.healer.HealData` of the ``--heal-*`` options."""
    from replaceme.healer import HealData

    return HealData(heal_data, column=heal_column, split=heal_split, samples=heal_samples)


def model_options(f: F) -> F:
    """``--device``, ``--dtype`` and ``--trust-remote-code``."""
    decorators = [
        click.option("--device", default="auto", show_default=True, help="auto (CUDA if available), cpu, cuda, cuda:N."),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                     show_default=True, help="auto: the checkpoint's stored dtype (bfloat16 on CUDA, float32 on CPU when unknown)."),
        click.option("--trust-remote-code", is_flag=True, help="Allow custom model code from the hub (off by default)."),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def offload_option(what: str) -> Callable[[F], F]:
    """``--offload`` and ``--disk-budget`` for a command that runs the model (``what``: what
    it does layer by layer)."""
    offload = click.option("--offload", is_flag=True,
                           help="Never hold the whole model: read a local safetensors checkpoint one decoder layer at "
                                f"a time ({what}); peak memory ≈ one layer + the LM head + one batch's activations.")
    budget = click.option("--disk-budget", metavar="SIZE", default="auto", show_default=True,
                          help="With --offload: most bytes of activations kept on disk between layers (e.g. 200G); "
                               "above it the layers are streamed once per group of calibration batches that fits. "
                               "auto: half the free space of the temporary directory.")

    def decorate(f: F) -> F:
        return offload(budget(f))

    return decorate


class SizeType(click.ParamType):
    """A size option (``512M``, ``2G``, a byte count, ``auto``), checked at once and kept as
    given (recorded so in ``pruning.json``; the bytes are resolved where it is used)."""

    name = "SIZE"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from replaceme.errors import ReplacemeError
        from replaceme.offload.budget import parse_size

        if value is None or isinstance(value, int):
            return value
        try:
            parse_size(value, option=f"--{param.name.replace('_', '-')}" if param is not None else "size")
        except ReplacemeError as exc:
            self.fail(str(exc), param, ctx)
        return str(value).strip()


def statistics_options(f: F) -> F:
    """What the statistics pass may hold and where: ``--memory-budget``, ``--stats-passes``,
    ``--spill-dir`` and ``--gram-device`` (one definition for prune, compare and distances;
    the names are :class:`replaceme.settings.MemorySettings` fields)."""
    decorators = [
        click.option("--memory-budget", type=SizeType(), default="auto", show_default=True,
                     help="Most bytes the statistics may hold in RAM (Gram sums, the in-RAM activation sample, a "
                          "compensator's working chunk), e.g. 2G. The passes, where the sample lives and its size "
                          "are planned to fit it, and the plan is printed before the pass; a run that cannot fit "
                          "even two passes with the sample on disk is refused. auto: max(256 MiB, a quarter of "
                          "the model's weights), at most half the available RAM."),
        click.option("--stats-passes", type=click.Choice(["auto", "1", "2"]), default="auto", show_default=True,
                     help="With a distance selector, 2 = a distance pass, then the statistics of the chosen blocks "
                          "only (Gram sums 16·h² per block instead of 16·h²·(L-n); one more forward pass); auto "
                          "takes 2 when one pass would exceed --memory-budget and two need less."),
        click.option("--spill-dir", type=click.Path(file_okay=False),
                     help="Keep the activation sample (and --offload's activations between layers) in "
                          "memory-mapped files in a temporary directory under this one instead of RAM, so -o "
                          "token_budget can exceed RAM (a sample that does not fit --memory-budget goes to disk "
                          "anyway, in the system temporary directory by default)."),
        click.option("--gram-device", metavar="DEVICE",
                     help="Where the float64 Gram sums (XᵀX, XᵀY of every candidate block) live during the pass: "
                          "default the compute device; 'cpu' frees (L-n)·2·h²·8 bytes of GPU memory, at host "
                          "float64 speed."),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def memory_settings(values: dict[str, Any]) -> Any:
    """The :class:`~replaceme.settings.MemorySettings` of merged flags and file keys, with a
    ``--gram-device`` that names no device refused before any work."""
    from replaceme.settings import MemorySettings

    memory = MemorySettings.from_values(values)
    if memory.gram_device is not None:
        from replaceme.loading import check_device_name

        check_device_name(memory.gram_device, "--gram-device")
    return memory


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


def given(ctx: click.Context, name: str) -> bool:
    """Whether parameter ``name`` was set on the command line (or by environment), not defaulted."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def merge_file_settings(ctx: click.Context, settings: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The one rule for ``--config``/``--plan`` files: a flag given on the command line
    wins, then the file's value, then the flag's default.

    Args:
        settings: the file's settings, keyed by parameter name.
        values: parameter name -> the value click parsed.
    """
    return {name: value if given(ctx, name) or name not in settings else settings[name] for name, value in values.items()}


def parse_limit(value: Any) -> int | float | None:
    """``--limit`` (flag or file): a document count (integer >= 1) or a fraction in (0, 1)."""
    from replaceme.errors import ReplacemeError

    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ReplacemeError(f"--limit: {shown(value)} is not a number") from None
    if math.isfinite(number) and 0 < number < 1:
        return number
    if math.isfinite(number) and 1 <= number <= INT_MAX and number.is_integer():
        return int(number)
    raise ReplacemeError(f"--limit: {shown(value)}: give a count (1, 2, ...) or a fraction in (0, 1)")


class LimitType(click.ParamType):
    """``--limit`` as a click type (see :func:`parse_limit`)."""

    name = "K"

    def convert(self, value, param, ctx):
        from replaceme.errors import ReplacemeError

        try:
            return parse_limit(value)
        except ReplacemeError as exc:
            self.fail(str(exc), param, ctx)


def parse_kv(pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """``-o key value`` pairs to a dict (keys may use - or _)."""
    return {k.replace("-", "_"): v for k, v in pairs}


def format_option(f: F) -> F:
    """``--format table|plain|markdown|csv`` for commands that print a table (see :mod:`replaceme.formats`)."""
    from replaceme.formats import FORMATS

    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="How the table prints: a terminal table that fits the width, plain aligned text "
                             "(logs), markdown, or csv.")(f)


def break_lock_option(f: F) -> F:
    """``--break-lock``: take over the output's lock even when another run seems to hold it."""
    return click.option("--break-lock", is_flag=True,
                        help="Take over the output's lock file even if another run seems to hold it (a run "
                             "killed on another host or container). Make sure no such run is still writing.")(f)


def bootstrap_option(f: F) -> F:
    """``--bootstrap-iters``: resamples for perplexity error bars (lm-eval's default, vectorised)."""
    return click.option("--bootstrap-iters", type=count(0), default=100_000, show_default=True,
                        help="Bootstrap resamples for the standard error of perplexities (ours and lm-eval's); "
                             "0 = none. Accuracies use a closed form.")(f)


def load_for_command(path: str, *, device: str, dtype: str, trust_remote_code: bool, offload: bool,
                     disk_budget: str | None = None) -> tuple[Any, Any, Any]:
    """Load ``path`` whole, or with ``offload`` as a skeleton over its checkpoint that is read one
    decoder layer at a time (:mod:`replaceme.offload`): ``(model, tokenizer, offloaded or None)``."""
    if not offload:
        from replaceme.loading import load_model

        model, tokenizer = load_model(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        return model, tokenizer, None
    from replaceme.offload import load_offloaded
    from replaceme.offload.budget import parse_size
    from replaceme.registry import adapter_for

    offloaded, tokenizer = load_offloaded(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                                          adapter_for=adapter_for, disk_budget=parse_size(disk_budget))
    return offloaded.model, tokenizer, offloaded
