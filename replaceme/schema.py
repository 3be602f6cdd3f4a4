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

from replaceme.errors import ReplacemeError, did_you_mean, first_line, shown

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
            raise ReplacemeError(f"{where}: '{key}' must be a finite number, got {shown(item)}")
        if _is_int(item) and abs(item) > INT_LIMIT:
            raise ReplacemeError(f"{where}: '{key}' is too large ({shown(item)})")
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if (spec.minimum is not None and item < spec.minimum) or (spec.maximum is not None and item > spec.maximum):
                raise ReplacemeError(f"{where}: '{key}' must be {spec.describe()}, got {shown(item)}")
        if spec.choices and isinstance(item, str) and item not in spec.choices:
            raise ReplacemeError(f"{where}: '{key}' must be one of {', '.join(spec.choices)}, got {shown(item)}"
                                 f"{did_you_mean(item, spec.choices)}")
    return value


def _show(value: Any) -> str:
    kind = {str: "the string", bool: "the boolean", int: "the integer", float: "the number"}.get(type(value))
    text = shown(value)
    return f"{kind} {text}" if kind else f"{type(value).__name__} {text}" if value is not None else "nothing"


def check_mapping(data: Mapping[str, Any], schema: Mapping[str, Key], where: str) -> dict[str, Any]:
    """Check every key of ``data`` against ``schema``: unknown keys (with a
    did-you-mean) and wrong types are one-line errors; ``None`` values are dropped."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ReplacemeError(f"{where}: key {shown(key)} is not a string")
        if key not in schema:
            raise ReplacemeError(f"{where}: unknown key {shown(key)}{did_you_mean(key, schema)}; "
                                 f"keys are: {', '.join(sorted(schema))}")
        if value is None:
            continue
        out[key] = check_value(where, key, value, schema[key])
    return out


#: a YAML document whose aliases expand to more values than this is refused (an "alias bomb")
MAX_YAML_VALUES = 100_000
#: integers with more digits than this are refused while parsing (none fits 64 bits anyway)
MAX_INT_DIGITS = 100


def _strict_loader() -> type:
    """``yaml.SafeLoader`` that refuses duplicate keys, integers of more than
    :data:`MAX_INT_DIGITS` digits, and documents whose aliases expand to more than
    :data:`MAX_YAML_VALUES` values (counted on the node graph, before anything is built)."""
    import yaml
    from yaml.constructor import ConstructorError

    class StrictLoader(yaml.SafeLoader):
        def construct_document(self, node):
            _bounded(node)
            return super().construct_document(node)

        def construct_mapping(self, node, deep=False):
            seen: dict[Any, Any] = {}
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the base class says so
                if first is not None:
                    raise ConstructorError(None, None, f"duplicate key {shown(key)} (first on line {first.line + 1})",
                                           key_node.start_mark)
                seen[key] = key_node.start_mark
            return super().construct_mapping(node, deep)

        def construct_yaml_int(self, node):
            digits = sum(ch.isdigit() for ch in str(node.value))
            if digits > MAX_INT_DIGITS:
                raise ConstructorError(None, None, f"an integer of {digits} digits is too large", node.start_mark)
            return super().construct_yaml_int(node)

    StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
    return StrictLoader


def _bounded(root: Any) -> None:
    """Refuse a node graph whose aliases expand to more than :data:`MAX_YAML_VALUES` values."""
    from yaml.constructor import ConstructorError

    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1  # a node that contains itself counts once
        children = node.value if isinstance(node.value, list) else []
        total = 1
        for child in children:
            for part in (child if isinstance(child, tuple) else (child,)):
                total += size(part)
                if total > MAX_YAML_VALUES:
                    break
        sizes[id(node)] = min(total, MAX_YAML_VALUES + 1)
        return sizes[id(node)]

    if size(root) > MAX_YAML_VALUES:
        raise ConstructorError(None, None, f"its aliases expand to more than {MAX_YAML_VALUES:,} values",
                               root.start_mark)


def load_yaml(text: str) -> Any:
    """Parse YAML text safely and with bounded work (see :func:`_strict_loader`);
    raises ``yaml.YAMLError`` for what it refuses."""
    import yaml

    return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """Read a YAML mapping (:func:`load_yaml`); one-line errors for a missing file, bad
    YAML, duplicate keys, alias bombs and huge integers."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise ReplacemeError(f"{what} not found: {path}")
    try:
        data = load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ReplacemeError(f"{path}: not a text file (cannot decode it as UTF-8)") from None
    except yaml.YAMLError as exc:
        raise ReplacemeError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    except RecursionError:
        raise ReplacemeError(f"{path}: YAML nested too deeply") from None
    if not isinstance(data, dict):
        raise ReplacemeError(f"{path}: expected a mapping of keys to values")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ReplacemeError(f"{path}: key {shown(bad[0])} is not a string")
    return data


def _yaml_problem(exc: Any) -> str:
    """``problem, line N`` of a YAML error, bounded."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem:
        return (problem[:200] + (f", line {mark.line + 1}" if mark is not None else ""))
    return first_line(exc)[:200]
