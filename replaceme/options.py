"""Typed options for plugin components.

Each component declares its options as a dataclass whose fields carry a help
text in ``metadata["help"]``. Values arrive as strings (CLI ``-o key value``,
YAML) or Python objects (API) and are coerced to the field types here; unknown
keys are rejected with a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from replaceme.errors import ReplacemeError, did_you_mean


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """Declare an option field with a default and a help text."""
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


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
        raise ReplacemeError(errors[0] if errors else f"option '{name}': bad value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        for c in choices:
            if value == c or str(value) == str(c):
                return c
        raise ReplacemeError(
            f"option '{name}': {value!r} is not one of {', '.join(map(str, choices))}"
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
        raise ReplacemeError(f"option '{name}': expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ReplacemeError(f"option '{name}': expected {tp.__name__}, got {value!r}")
        try:
            number = tp(value) if tp is float or isinstance(value, int) else int(str(value), 0)
        except (TypeError, ValueError):
            raise ReplacemeError(f"option '{name}': expected {tp.__name__}, got {value!r}") from None
        return number
    if tp is str:
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
    kwargs = {k: coerce(k, v, hints[k]) for k, v in values.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ReplacemeError(f"{owner}: {exc}") from None
    return obj


def describe_options(cls: type) -> list[dict[str, Any]]:
    """The options of ``cls`` as JSON-able rows: name, type, default, help."""
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
            }
        )
    return rows


def options_to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
