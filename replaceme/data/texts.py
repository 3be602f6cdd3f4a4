"""Load a list of text records from a local file or a Hugging Face hub dataset.

A *source* is written as one string, the same on the CLI and in Python:

- a local file: ``.txt`` (records split on blank lines, or on lines where the
  file has no blank lines), ``.jsonl``/``.json``, ``.parquet`` or ``.csv``
  with a text column;
- a hub dataset: ``name`` or ``name:config`` (e.g. ``wikitext:wikitext-2-raw-v1``),
  read with :func:`datasets.load_dataset` and a split.

Either may end with a record slice ``[start:end]`` (integers or percentages,
like ``valid.txt[:2000]`` or ``wikitext:wikitext-2-raw-v1[50%:]``) so that
calibration and evaluation text can be kept apart.
"""

from __future__ import annotations

import codecs
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError, first_line, shorten

_SLICE = re.compile(r"^(?P<base>.*)\[(?P<start>-?\d*%?):(?P<end>-?\d*%?)\]$")
LOCAL_SUFFIXES = (".txt", ".raw", ".jsonl", ".json", ".parquet", ".csv")


@dataclass(frozen=True)
class TextSource:
    """Where text records come from.

    Attributes:
        spec: file path or hub dataset name (``name`` or ``name:config``),
            optionally ending with a ``[start:end]`` record slice.
        column: field holding the text (ignored for ``.txt``).
        split: split of a hub dataset.
    """

    spec: str
    column: str = "text"
    split: str = "train"

    @property
    def base(self) -> str:
        m = _SLICE.match(self.spec)
        return m.group("base") if m else self.spec

    @property
    def is_local(self) -> bool:
        base = self.base
        return (
            Path(base).suffix.lower() in LOCAL_SUFFIXES
            or base.startswith((".", "/", "~"))
            or Path(base).exists()
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, used in cache keys and provenance."""
        out: dict[str, Any] = {"spec": self.spec, "column": self.column}
        if not self.is_local:
            out["split"] = self.split
        else:
            from replaceme.provenance import file_fingerprint

            out.update(file_fingerprint(Path(self.base).expanduser()) or {})  # size, mtime and a hash of the head
        return out


def _bound(text: str, n: int) -> int:
    if text == "":
        return None  # type: ignore[return-value]
    if text.endswith("%"):
        return round(float(text[:-1]) / 100 * n)
    return int(text)


def _slice(records: list[Any], spec: str) -> list[Any]:
    m = _SLICE.match(spec)
    if not m:
        return records
    n = len(records)
    return records[_bound(m.group("start"), n) : _bound(m.group("end"), n)]


def _split_txt(text: str) -> list[str]:
    text = text.replace("\r\n", "\n")
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text)]
    paragraphs = [p for p in paragraphs if p]
    if len(paragraphs) <= 1:
        paragraphs = [line.strip() for line in text.split("\n") if line.strip()]
    return paragraphs


#: byte-order marks, longest first (UTF-32's LE mark begins with UTF-16's)
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32"),
         (codecs.BOM_UTF8, "utf-8", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16"),
         (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16"))


def _read_text(path: Path) -> str:
    """The text of ``path``: UTF-8, or UTF-8/16/32 with a byte-order mark, or UTF-16
    without one (recognised by its zero bytes); anything else is refused in one line."""
    data = path.read_bytes()
    encoding, label, skip = _encoding(data)
    if encoding is None:
        raise ReplacemeError(f"{path}: binary data, not text")
    try:
        text = data[skip:].decode(encoding)
    except UnicodeDecodeError as exc:
        raise ReplacemeError(f"{path}: not {label} text (undecodable byte at offset {skip + exc.start})") from None
    if "\x00" in text[:65536]:
        raise ReplacemeError(f"{path}: binary data, not text")
    return text


def _encoding(data: bytes) -> tuple[str | None, str, int]:
    """``(codec, name, bytes to skip)`` of ``data``; codec None for binary data."""
    for bom, codec, label in _BOMS:
        if data.startswith(bom):
            return codec, label, len(bom)
    head = data[:65536]
    if b"\x00" not in head:
        return "utf-8", "UTF-8", 0
    # UTF-16 without a mark: text in the first 256 code points has a zero in every other byte
    even, odd = head[0::2], head[1::2]
    if len(head) % 2 == 0 and head:
        if odd.count(0) >= 0.9 * len(odd) and even.count(0) == 0:
            return "utf-16-le", "UTF-16", 0
        if even.count(0) >= 0.9 * len(even) and odd.count(0) == 0:
            return "utf-16-be", "UTF-16", 0
    return None, "", 0


def _json_rows(path: Path) -> list[Any]:
    text = _read_text(path)
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise ReplacemeError(f"{path}: line {number} is not valid JSON ({exc})") from None
        return rows
    try:
        data = json.loads(text)
    except RecursionError:
        raise ReplacemeError(f"{path}: JSON nested too deeply") from None
    except ValueError as exc:
        raise ReplacemeError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict):
        data = data.get("data", [data])
    if not isinstance(data, list):
        raise ReplacemeError(f"{path}: expected a list of records (or {{\"data\": [...]}}), got {type(data).__name__}")
    return data


def _table_rows(path: Path) -> list[Any]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(io.StringIO(_read_text(path)))
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ReplacemeError(f"{path}: cannot read it as {path.suffix.lower()[1:]} ({first_line(exc)})") from None
    except Exception as exc:  # pyarrow's own errors for corrupt files
        if type(exc).__module__.startswith(("pyarrow", "fastparquet")):
            raise ReplacemeError(f"{path}: corrupt {path.suffix.lower()[1:]} file ({first_line(exc)})") from None
        raise
    return frame.to_dict("records")


def _column(path: Path, rows: list[Any], column: str) -> list[Any]:
    """The ``column`` of every record; a record without it is an error naming its number."""
    out = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ReplacemeError(f"{path}: record {number} is a {type(row).__name__}, not an object with a "
                                 f"'{shorten(column)}' field")
        if column not in row:
            keys = shorten(", ".join(shorten(k, 100) for k in list(row)[:20]) or "(none)")
            raise ReplacemeError(f"{path}: record {number} has no column '{shorten(column)}'; its columns are: {keys}")
        value = row[column]
        if isinstance(value, float) and value != value:  # pandas' missing value
            value = None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        elif value is not None and not isinstance(value, (str, list)):
            raise ReplacemeError(f"{path}: record {number}, column '{shorten(column)}': expected text, "
                                 f"got {type(value).__name__}")
        out.append(value)
    return out


def _read_local(path: Path, column: str) -> list[Any]:
    suffix = path.suffix.lower()
    if suffix in (".txt", ".raw") or suffix not in LOCAL_SUFFIXES:
        return _split_txt(_read_text(path))
    rows = _json_rows(path) if suffix in (".jsonl", ".json") else _table_rows(path)
    return _column(path, rows, column)


#: records already read in this process, by (path, column, size, mtime, hash of the head): a pre-check
#: and the run read once, and a file rewritten in place (even with its old size and time) is read again
_READ: dict[tuple[str, str, str], list[Any]] = {}


def _read_local_cached(path: Path, column: str) -> list[Any]:
    from replaceme.provenance import file_fingerprint

    key = (str(path.resolve()), column, repr(sorted((file_fingerprint(path) or {}).items())))
    if key not in _READ:
        if len(_READ) > 8:
            _READ.clear()
        _READ[key] = _read_local(path, column)
    return list(_READ[key])


def _read_hub(name: str, split: str, column: str) -> list[Any]:
    import datasets

    dataset_name, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(dataset_name, config or None, split=split)
    except Exception as exc:  # network, missing dataset, bad split ...
        raise ReplacemeError(f"cannot load dataset '{shorten(name)}' (split '{shorten(split)}'): "
                             f"{shorten(first_line(exc))}") from exc
    if column not in ds.column_names:
        raise ReplacemeError(
            f"dataset '{shorten(name)}': no column '{shorten(column)}'; columns are: {shorten(', '.join(ds.column_names))}"
        )
    return list(ds[column])


def load_texts(source: TextSource | str) -> list[Any]:
    """Read the records of ``source`` (strings, or chat message lists).

    Empty records are dropped. Raises :class:`ReplacemeError` with one line when
    the file is missing, empty or lacks the column.
    """
    if isinstance(source, str):
        source = TextSource(source)
    base = source.base
    if source.is_local:
        path = Path(base).expanduser()
        if not path.exists():
            raise ReplacemeError(f"text file not found: {shorten(base)}")
        if not path.is_file():
            raise ReplacemeError(f"{shorten(base)} is not a file")
        try:
            records = _read_local_cached(path, source.column)
        except OSError as exc:
            raise ReplacemeError(f"cannot read {shorten(base)}: {exc.strerror or exc}") from None
    else:
        records = _read_hub(base, source.split, source.column)
    records = [r for r in _slice(records, source.spec) if r is not None and (not isinstance(r, str) or r.strip())]
    if not records:
        raise ReplacemeError(f"no text records in {shorten(source.spec)}")
    return records
