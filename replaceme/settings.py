"""Run settings in named groups, shared by the CLI (flags and ``--config``), the Python
API and ``pruning.json`` (under ``settings``).

Four groups describe a run: :class:`LoadSettings` (where and how the model is loaded),
:class:`MemorySettings` (what is kept out of memory, and where), the calibration set
(:class:`replaceme.calibration.CalibrationSpec`) and the evaluation
(:class:`replaceme.evaluation.spec.EvalSpec`). The field names are the CLI's option
names (``--spill-dir`` is ``spill_dir``), so one mapping of merged flags and config
keys builds them (:meth:`Settings.from_values`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from replaceme.errors import ReplacemeError

S = TypeVar("S", bound="Settings")


class Settings:
    """What every settings group shares: built from a mapping, merged with keywords, JSON-able."""

    @classmethod
    def from_values(cls: type[S], values: Mapping[str, Any]) -> S:
        """The group from a mapping keyed by option name (other keys are ignored)."""
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})  # type: ignore[arg-type]

    @classmethod
    def merged(cls: type[S], given: S | None, **keywords: Any) -> S:
        """``given`` (a settings object) or the group made of ``keywords``; a keyword set away
        from its default beside ``given`` is ambiguous (one line naming it)."""
        if given is None:
            return cls.from_values(keywords)
        if not isinstance(given, cls):
            raise ReplacemeError(f"expected a {cls.__name__}, got {type(given).__name__}")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        both = sorted(k for k, v in keywords.items() if k in defaults and v != defaults[k] and v != getattr(given, k))
        if both:
            raise ReplacemeError(f"{', '.join(both)} given both as keyword(s) and in a {cls.__name__}")
        return given

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (paths as text)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}  # type: ignore[call-overload]


@dataclass(frozen=True)
class LoadSettings(Settings):
    """How the model is loaded.

    Attributes:
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``.
        dtype: ``auto`` (the checkpoint's stored dtype), ``float32``, ``bfloat16``, ``float16``.
        trust_remote_code: allow custom model code from the hub.
    """

    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class MemorySettings(Settings):
    """What is kept out of memory during a run, and where.

    Attributes:
        offload: never hold the whole model: read it one decoder layer at a time
            (:mod:`replaceme.offload`).
        disk_budget: with ``offload``, most bytes of activations kept on disk between
            layers (``"200G"``, a byte count, or None/``"auto"``: half the free space).
        spill_dir: keep the activation sample (and the offloaded activations between
            layers) in files in a run directory under this one instead of RAM.
        gram_device: where the float64 Gram sums live during the pass (default: the
            compute device).
        calib_4bit: run the calibration pass on a 4-bit copy of the model.
        stats_passes: ``auto``, ``"1"`` or ``"2"`` statistics passes (:mod:`replaceme.passes`):
            two hold far smaller statistics at the cost of a second forward pass.
        memory_budget: most bytes the run's statistics may hold in RAM (Gram sums, the
            in-RAM activation sample, a compensator's working chunk): ``"2G"``, a byte
            count, or ``"auto"``/None (:func:`replaceme.resources.auto_memory_budget`).
            The passes, where the sample lives and its size are planned to fit it
            (:func:`replaceme.passes.plan_statistics`).
    """

    offload: bool = False
    disk_budget: int | str | None = None
    spill_dir: str | Path | None = None
    gram_device: str | None = None
    calib_4bit: bool = False
    stats_passes: str = "auto"
    memory_budget: int | str | None = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stats_passes", str(self.stats_passes))  # 2 (a YAML integer) is "2"
