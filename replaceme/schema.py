"""Type checks for settings read from YAML (``--config``, ``--plan``).

YAML gives loosely typed values: ``overwrite: "false"`` is a *string*, which
Python would treat as true. Every key a file may hold is declared here with the
type it must have; a wrong type is one line naming the file, the key and the
type expected, and an unknown key is an error with a did-you-mean.

A declaration is a :class:`Key`; ``None`` values count as "not given" and are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError, did_you_mean

#: integers beyond this cannot reach torch or numpy (64-bit) and are refused
INT_LIMIT = 2**63 - 1
#: seeds feed numpy, which takes 32-bit seeds
SEED_LIMIT = 2**32 - 1


@dataclass(frozen=True)
class Key:
    """What one key must hold.

    Attributes:
        types: accepted kinds, among ``"str"``, ``"int"``, ``"float"``, ``"bool"``,
            ``"list[str]"``, ``"list[int]"``, ``"mapping"``, ``"list"``.
        minimum, maximum: inclusive bounds for numbers (and list items).
        choices: allowed values for strings.
    """

    types: tuple[str, ...]
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        names = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
                 "list[str]": "a list of strings", "list[int]": "a list of integers", "mapping": "a mapping",
                 "list": "a list"}
        text = " or ".join(names[t] for t in self.types)
        if self.choices:
            text += f" (one of {', '.join(self.choices)})"
        if self.minimum is not None and self.maximum is not None:
            text += f" between {_num(self.minimum)} and {_num(self.maximum)}"
        elif self.minimum is not None:
            text += f" >= {_num(self.minimum)}"
        return text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


STR = Key(("str",))
BOOL = Key(("bool",))
COUNT = Key(("int",), minimum=1, maximum=2**31 - 1)
SEED = Key(("int",), minimum=0, maximum=SEED_LIMIT)
STRS = Key(("str", "list[str]"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _matches(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return _is_int(value)
    if kind == "float":
        return (_is_int(value) or isinstance(value, float))
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "list[int]":
        return isinstance(value, list) and all(_is_int(v) for v in value)
    if kind == "mapping":
        return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
    if kind == "list":
        return isinstance(value, list)
    raise KeyError(kind)


def check_value(where: str, key: str, value: Any, spec: Key) -> Any:
    """Return ``value`` if it has the declared type and range, else raise one line."""
    if not any(_matches(kind, value) for kind in spec.types):
        raise ReplacemeError(f"{where}: '{key}' must be {spec.describe()}, got {_show(value)}")
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, float) and not math.isfinite(item):
            raise ReplacemeError(f"{where}: '{key}' must be a finite number, got {item!r}")
        if _is_int(item) and abs(item) > INT_LIMIT:
            raise ReplacemeError(f"{where}: '{key}' is too large ({item})")
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if (spec.minimum is not None and item < spec.minimum) or (spec.maximum is not None and item > spec.maximum):
                raise ReplacemeError(f"{where}: '{key}' must be {spec.describe()}, got {item!r}")
        if spec.choices and isinstance(item, str) and item not in spec.choices:
            raise ReplacemeError(f"{where}: '{key}' must be one of {', '.join(spec.choices)}, got {item!r}"
                                 f"{did_you_mean(item, spec.choices)}")
    return value


def _show(value: Any) -> str:
    kind = {str: "the string", bool: "the boolean", int: "the integer", float: "the number"}.get(type(value))
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}" if kind else f"{type(value).__name__} {text}" if value is not None else "nothing"


def check_mapping(data: Mapping[str, Any], schema: Mapping[str, Key], where: str) -> dict[str, Any]:
    """Check every key of ``data`` against ``schema``: unknown keys (with a
    did-you-mean) and wrong types are one-line errors; ``None`` values are dropped."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ReplacemeError(f"{where}: key {key!r} is not a string")
        if key not in schema:
            raise ReplacemeError(f"{where}: unknown key '{key}'{did_you_mean(key, schema)}; "
                                 f"keys are: {', '.join(sorted(schema))}")
        if value is None:
            continue
        out[key] = check_value(where, key, value, schema[key])
    return out


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """Read a YAML mapping with ``safe_load``; one-line errors for a missing file or bad YAML."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ReplacemeError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ReplacemeError(f"{path}: not a text file (cannot decode it as UTF-8)") from None
    except yaml.YAMLError as exc:
        raise ReplacemeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ReplacemeError(f"{path}: YAML nested too deeply") from None
    if not isinstance(data, dict):
        raise ReplacemeError(f"{path}: expected a mapping of keys to values")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ReplacemeError(f"{path}: key {bad[0]!r} is not a string")
    return data
