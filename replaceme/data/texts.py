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

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError

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
            path = Path(self.base).expanduser()
            if path.exists():
                stat = path.stat()
                out["size"] = stat.st_size
                out["mtime_ns"] = stat.st_mtime_ns
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


def _read_local(path: Path, column: str) -> list[Any]:
    suffix = path.suffix.lower()
    if suffix in (".txt", ".raw") or suffix not in LOCAL_SUFFIXES:
        return _split_txt(path.read_text(encoding="utf-8"))
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data if isinstance(data, list) else data.get("data", [data])
    elif suffix == ".parquet":
        import pandas as pd

        rows = pd.read_parquet(path).to_dict("records")
    else:  # .csv
        import pandas as pd

        rows = pd.read_csv(path).to_dict("records")
    if rows and column not in rows[0]:
        raise ReplacemeError(
            f"{path}: no column '{column}'; columns are: {', '.join(map(str, rows[0].keys()))}"
        )
    return [row[column] for row in rows]


def _read_hub(name: str, split: str, column: str) -> list[Any]:
    import datasets

    dataset_name, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(dataset_name, config or None, split=split)
    except Exception as exc:  # network, missing dataset, bad split ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReplacemeError(f"cannot load dataset '{name}' (split '{split}'): {first}") from exc
    if column not in ds.column_names:
        raise ReplacemeError(
            f"dataset '{name}': no column '{column}'; columns are: {', '.join(ds.column_names)}"
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
        if not path.is_file():
            raise ReplacemeError(f"text file not found: {base}")
        records = _read_local(path, source.column)
    else:
        records = _read_hub(base, source.split, source.column)
    records = [r for r in _slice(records, source.spec) if r is not None and (not isinstance(r, str) or r.strip())]
    if not records:
        raise ReplacemeError(f"no text records in {source.spec}")
    return records
