"""Typed options for plugin components.

Each component declares its options as a dataclass whose fields carry a help
text in ``metadata["help"]``. Values arrive as strings (CLI ``-o key value``,
YAML) or Python objects (API) and are coerced to the field types here; unknown
keys are rejected with a did-you-mean.

An option that matters only in one mode of its component declares it with
``applies_when``: a mapping from another option's name to the value (or tuple
of values) under which this one is read, checked on the parsed options (after
``__post_init__`` fills in what a preset implies). An option the user gave while
its condition does not hold does nothing: :func:`ignored_options` names it, and
the run warns (or, with ``--strict``, refuses) and records it as ignored::

    lr: float = option(1e-4, "Adam learning rate", applies_when={"solver": "adam"})
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, Union, get_args, get_origin

from replaceme.errors import ReplacemeError, did_you_mean, shown
from replaceme.schema import INT_LIMIT




def option(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    nonfinite: bool = False,
    applies_when: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Declare an option field with a default and a help text.

    Args:
        minimum, maximum: inclusive bounds checked for numbers (any source: CLI, YAML, API).
        nonfinite: allow NaN and ±Inf for a float option (refused by default).
        applies_when: ``{other option: value or tuple of values}`` under which this
            option is read; otherwise a value given for it is reported as ignored.
    """
    metadata = {"help": help, "minimum": minimum, "maximum": maximum, "nonfinite": nonfinite,
                "applies_when": dict(applies_when or {})}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def check_value(name: str, value: Any, metadata: Any = None) -> Any:
    """The generic checks every option value passes, whatever declared it.

    Floats must be finite unless the field's metadata says ``nonfinite``;
    integers must fit in 64 bits; numbers must lie within the field's
    ``minimum``/``maximum``. Containers are checked element by element.
    """
    meta = metadata or {}
    if isinstance(value, (list, tuple)):
        for item in value:
            check_value(name, item, metadata)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(value, float) and not math.isfinite(value) and not meta.get("nonfinite"):
        raise ReplacemeError(f"option '{name}': must be a finite number, got {shown(value)}")
    if isinstance(value, int) and abs(value) > INT_LIMIT:
        raise ReplacemeError(f"option '{name}': {value} is too large (at most {INT_LIMIT})")
    low, high = meta.get("minimum"), meta.get("maximum")
    if low is not None and value < low:
        raise ReplacemeError(f"option '{name}': must be >= {low}, got {shown(value)}")
    if high is not None and value > high:
        raise ReplacemeError(f"option '{name}': must be <= {high}, got {shown(value)}")
    return value


@dataclasses.dataclass
class NoOptions:
    """A component without options."""


def option_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def describe_type(tp: Any) -> str:
    """A short human description of a field type (for ``methods`` listings)."""
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return describe_type(args[0]) + "?" if len(args) == 1 else "|".join(describe_type(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (often a string) to type ``tp``, or raise a one-line error."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(name, value, arg)
            except ReplacemeError as exc:
                errors.append(str(exc))
        raise ReplacemeError(errors[0] if errors else f"option '{name}': bad value {shown(value)}")
    if origin is Literal:
        choices = get_args(tp)
        for c in choices:
            if value == c or str(value) == str(c):
                return c
        raise ReplacemeError(
            f"option '{name}': {shown(value)} is not one of {', '.join(map(str, choices))}"
            f"{did_you_mean(str(value), map(str, choices))}"
        )
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ReplacemeError(f"option '{name}': expected true/false, got {shown(value)}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ReplacemeError(f"option '{name}': expected {tp.__name__}, got {shown(value)}")
        if isinstance(value, (list, tuple, dict, set)) or value is None:
            raise ReplacemeError(f"option '{name}': expected {tp.__name__}, got {shown(value)}")
        try:
            if tp is float:
                number = float(value)
            elif isinstance(value, int):
                number = value
            elif isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(value)
                number = int(value)
            else:
                text = str(value).strip().replace("_", "")
                try:
                    number = int(text)
                except ValueError:
                    number = int(text, 0)  # 0x.., 0o.., 0b..
        except (TypeError, ValueError, OverflowError):
            raise ReplacemeError(f"option '{name}': expected {tp.__name__}, got {shown(value)}") from None
        return number
    if tp is str:
        if isinstance(value, (list, tuple, dict, set)) or value is None:
            raise ReplacemeError(f"option '{name}': expected a string, got {shown(value)}")
        return str(value)
    return value


def parse_options(cls: type, values: dict[str, Any], owner: str) -> Any:
    """Build an instance of options dataclass ``cls`` from ``values``.

    Raises:
        ReplacemeError: for an unknown key (with a did-you-mean) or a bad value.
    """
    fields = option_fields(cls)
    hints = _type_hints(cls)
    unknown_keys = [k for k in values if k not in fields]
    if unknown_keys:
        key = unknown_keys[0]
        raise ReplacemeError(
            f"{owner}: unknown option '{key}'{did_you_mean(key, fields)}; "
            f"options are: {', '.join(fields) or '(none)'}"
        )
    kwargs = {k: check_value(k, coerce(k, v, hints[k]), fields[k].metadata) for k, v in values.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ReplacemeError(f"{owner}: {exc}") from None
    for f in dataclasses.fields(cls):  # defaults and __post_init__ changes pass the same checks
        check_value(f.name, getattr(obj, f.name), f.metadata)
    return obj


def _allowed(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list, set, frozenset)) else (value,)


def condition_text(conditions: dict[str, Any]) -> str:
    """``solver = adam`` / ``solver in adam, lbfgs`` for messages and listings."""
    parts = []
    for name, value in conditions.items():
        allowed = _allowed(value)
        parts.append(f"{name} = {allowed[0]}" if len(allowed) == 1 else f"{name} in {', '.join(map(str, allowed))}")
    return " and ".join(parts)


def ignored_options(obj: Any, given: Iterable[str]) -> dict[str, str]:
    """Options in ``given`` that the parsed options ``obj`` do not read, each with the reason.

    An option is ignored when its ``applies_when`` condition does not hold on
    ``obj`` (e.g. ``lr`` of an Adam fit when the solver in effect is L-BFGS).
    """
    fields = option_fields(type(obj))
    out = {}
    for name in given:
        conditions = fields[name].metadata.get("applies_when") if name in fields else None
        failed = {k: v for k, v in (conditions or {}).items() if getattr(obj, k) not in _allowed(v)}
        if failed:
            actual = ", ".join(f"{k} = {getattr(obj, k)}" for k in failed)
            out[name] = f"read only when {condition_text(failed)} (here {actual})"
    return out


def describe_options(cls: type) -> list[dict[str, Any]]:
    """The options of ``cls`` as JSON-able rows: name, type, default, help (and when it applies)."""
    hints = _type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        rows.append(
            {
                "name": f.name,
                "type": describe_type(hints[f.name]),
                "default": default,
                "help": f.metadata.get("help", ""),
                "applies_when": condition_text(f.metadata.get("applies_when") or {}) or None,
            }
        )
    return rows


def options_to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
