"""The ownership record: what makes a folder replaceme's own output.

A marker file (``pruning.json``, compare's ``manifest.json``) carries
``{OWNER_KEY: {tool, kind, files}}`` listing what replaceme wrote there.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError

#: key of the ownership record in a marker file (``pruning.json``, ``manifest.json``)
OWNER_KEY = "replaceme_output"
#: files that may carry an ownership record, in the order they are looked for
MARKER_FILES = ["pruning.json", "manifest.json"]


def ownership_record(kind: str, files: Iterable[str]) -> dict[str, Any]:
    """The record that makes a directory replaceme's: ``{OWNER_KEY: {kind, files}}``.

    ``files`` are glob patterns (``fnmatch``, relative POSIX paths) of everything
    replaceme wrote there; use :func:`literal` for exact names.
    """
    return {OWNER_KEY: {"tool": "replaceme", "kind": kind, "files": sorted(set(files))}}


def literal(name: str) -> str:
    """``name`` as a pattern that matches only itself."""
    return glob.escape(name)


def listing(directory: Path) -> list[str]:
    """Every file (and symlink) under ``directory``, as relative POSIX paths."""
    out = []
    for root, dirs, files in os.walk(directory):
        rel = Path(root).relative_to(directory)
        out += [(rel / name).as_posix() for name in files]
        out += [(rel / name).as_posix() for name in dirs if os.path.islink(os.path.join(root, name))]
    return sorted(out)


@dataclass
class Ownership:
    """What a replaceme output directory says about itself."""

    kind: str
    marker: str
    patterns: list[str]

    def foreign(self, directory: Path) -> list[str]:
        """Files under ``directory`` that this record does not cover."""
        return [f for f in listing(directory)
                if f != self.marker and not any(fnmatch.fnmatchcase(f, p) for p in self.patterns)]


def read_ownership(directory: Path) -> Ownership | None:
    """The ownership record of ``directory``, or None when replaceme did not write it."""
    for name in MARKER_FILES:
        path = directory / name
        if not path.is_file() or path.is_symlink():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8")).get(OWNER_KEY)
        except (OSError, ValueError, AttributeError):
            continue
        if (isinstance(record, dict) and record.get("tool") == "replaceme" and isinstance(record.get("kind"), str)
                and isinstance(record.get("files"), list) and all(isinstance(p, str) for p in record["files"])):
            return Ownership(record["kind"], name, record["files"])
    return None


def check_owned_file(directory: str | os.PathLike[str], name: str, *, kind: str, option: str) -> Ownership:
    """May replaceme (re)write the file ``name`` inside ``directory``? Only when the
    directory is replaceme's own output of ``kind`` and ``name`` is absent or one it wrote."""
    own = read_ownership(Path(directory))
    if own is None or own.kind != kind:
        raise ReplacemeError(f"{option}: {directory} is not a {kind.replace('-', ' ')} written by replaceme; "
                             "only replaceme's own outputs are written to")
    if name in own.foreign(Path(directory)):
        raise ReplacemeError(f"{option}: {Path(directory) / name} was not written by replaceme; refusing to replace it")
    return own


def claim(directory: str | os.PathLike[str], names: Iterable[str]) -> None:
    """Add files replaceme has just written in its own ``directory`` to its ownership record."""
    from replaceme.outputs.files import write_json_atomic

    own = read_ownership(Path(directory))
    if own is None:
        return
    path = Path(directory) / own.marker
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(ownership_record(own.kind, [*own.patterns, *(literal(n) for n in names)]))
    write_json_atomic(path, data)
