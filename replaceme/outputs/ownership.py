"""The ownership record: what replaceme wrote in a folder, file by file, by content.

Every folder replaceme writes into holds a record, :data:`RECORD_FILE`, listing
the exact relative paths it wrote there (no patterns), each with its size,
modification time and SHA-256. A file counts as replaceme's, and may be replaced
or deleted, only when the record lists it and it is unchanged: same size, and
same modification time or (when the time differs, e.g. after a copy) same
SHA-256. Anything else in the folder (a file the user added, or one they edited,
like a fine-tuned ``model.safetensors`` saved back) makes the folder the user's.

An output folder (a pruned model, a comparison) has a record of its ``kind``; a
single file written into any other folder (``distances --csv``, ``--plot``) is
listed in that folder's record of kind :data:`FILES_KIND`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError
from replaceme.outputs.runs import RECORD_FILE

#: the kind of a record that lists single files written into a folder that is not an output
FILES_KIND = "files"
#: key of the ownership record in marker files of replaceme before 0.3 (glob patterns, no contents)
OWNER_KEY = "replaceme_output"
#: files that carried that older record
MARKER_FILES = ["pruning.json", "manifest.json"]
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    """What the record keeps of one file: size, mtime (ns) and SHA-256."""
    st = os.stat(path, follow_symlinks=False)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_of(path)}


def unchanged(path: Path, entry: Any) -> bool:
    """Whether the regular file ``path`` still is what ``entry`` recorded."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    if not isinstance(entry, dict) or not path.is_file() or path.is_symlink():
        return False
    if entry.get("pending") is True:  # replaceme was writing it (atomically) when its run ended
        return True
    if st.st_size != entry.get("size"):
        return False
    if st.st_mtime_ns == entry.get("mtime_ns"):
        return True
    try:
        return sha256_of(path) == entry.get("sha256")
    except OSError:
        return False


def listing(directory: Path) -> list[str]:
    """Every file and symlink under ``directory`` as relative POSIX paths (empty
    folders hold no data and are not listed); the top-level record is left out."""
    out = []
    for root, dirs, files in os.walk(directory):
        rel = Path(root).relative_to(directory)
        out += [(rel / name).as_posix() for name in files]
        out += [(rel / name).as_posix() for name in dirs if os.path.islink(os.path.join(root, name))]
    return sorted(f for f in out if f != RECORD_FILE)


@dataclass
class Ownership:
    """A folder's record: its kind and the files replaceme wrote there (relative path -> entry)."""

    kind: str
    files: dict[str, Any] = field(default_factory=dict)
    legacy: bool = False
    marker: str = RECORD_FILE
    #: the previous output this one replaces, kept beside it until this one is complete
    replacing: str | None = None

    def problems(self, directory: Path) -> tuple[list[str], list[str]]:
        """Files under ``directory`` that are not replaceme's as it wrote them:
        ``(unlisted, changed)``; both empty when every file is ours, unchanged."""
        unlisted, changed = [], []
        for rel in listing(directory):
            entry = self.files.get(rel)
            if entry is None:
                unlisted.append(rel)
            elif not unchanged(directory / rel, entry):
                changed.append(rel)
        return unlisted, changed

    def foreign(self, directory: Path) -> list[str]:
        """The files of :meth:`problems`, unlisted then changed, in one list."""
        unlisted, changed = self.problems(directory)
        return unlisted + changed

    def describe_problems(self, directory: Path) -> str:
        """``"files replaceme did not write (a, b) and files changed since ..."``, or "" when none."""
        unlisted, changed = self.problems(directory)
        parts = []
        for files, what in ((unlisted, "files replaceme did not write"),
                            (changed, "files changed since replaceme wrote them")):
            if files:
                shown = ", ".join(files[:3]) + (f", ... ({len(files)} in all)" if len(files) > 3 else "")
                parts.append(f"{what} ({shown})")
        return " and ".join(parts)

    def owns(self, directory: Path, rel: str) -> bool:
        """Whether ``rel`` is listed and unchanged (an absent file is owned: nothing to lose)."""
        path = directory / rel
        if not os.path.lexists(path):
            return True
        return rel in self.files and unchanged(path, self.files[rel])

    def to_json(self) -> dict[str, Any]:
        data = {"tool": "replaceme", "kind": self.kind, "files": dict(sorted(self.files.items()))}
        return {**data, "replacing": self.replacing} if self.replacing else data


def read_ownership(directory: Path) -> Ownership | None:
    """The record of ``directory``, or None when replaceme wrote nothing there.

    A record of replaceme before 0.3 (patterns in ``pruning.json``/``manifest.json``,
    no contents) is returned with ``legacy=True``: it cannot show that files are unchanged.
    """
    directory = Path(directory).expanduser()
    path = directory / RECORD_FILE
    if path.is_file() and not path.is_symlink():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if (isinstance(data, dict) and data.get("tool") == "replaceme" and isinstance(data.get("kind"), str)
                and isinstance(data.get("files"), dict)):
            replacing = data.get("replacing")
            return Ownership(data["kind"], dict(data["files"]),
                             replacing=replacing if isinstance(replacing, str) else None)
    for name in MARKER_FILES:
        marker = Path(directory) / name
        if not marker.is_file() or marker.is_symlink():
            continue
        try:
            old = json.loads(marker.read_text(encoding="utf-8")).get(OWNER_KEY)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(old, dict) and old.get("tool") == "replaceme" and isinstance(old.get("kind"), str):
            return Ownership(old["kind"], {}, legacy=True, marker=name)
    return None


def write_record(directory: Path, own: Ownership) -> None:
    """Store ``own`` as ``directory``'s record (atomically)."""
    from replaceme.outputs.files import write_json_atomic

    write_json_atomic(Path(directory) / RECORD_FILE, own.to_json())


def record_tree(directory: Path, kind: str) -> Ownership:
    """Record every file now under ``directory`` as replaceme's (a folder it has just written);
    the files of a sharded checkpoint are hashed in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    names = listing(directory)
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, len(names)))) as pool:
        entries = pool.map(lambda rel: file_entry(directory / rel), names)  # hashlib releases the GIL
        own = Ownership(kind, dict(zip(names, entries)))
    write_record(directory, own)
    return own


def record_written(root: str | os.PathLike[str], *paths: str | os.PathLike[str], kind: str = FILES_KIND,
                   pending: bool = False) -> None:
    """Add files replaceme has just written under ``root`` to ``root``'s record
    (creating a record of ``kind`` when ``root`` has none); a path that does not
    exist is dropped from it. Call it under the output's lock, right after each write.

    With ``pending``, the paths are listed as *about to be written* (any content is
    replaceme's until the write is recorded): a run killed between its write and
    the record then leaves nothing a later run would take for the user's.
    """
    root = Path(root).expanduser()
    own = read_ownership(root)
    if own is None or own.legacy:
        own = Ownership(kind if own is None else own.kind)
    for p in paths:
        rel = _relative(root, Path(p))
        if pending:
            own.files[rel] = {"pending": True}
        elif os.path.isfile(root / rel) and not os.path.islink(root / rel):
            own.files[rel] = file_entry(root / rel)
        else:
            own.files.pop(rel, None)
    write_record(root, own)


@contextlib.contextmanager
def recording(root: str | os.PathLike[str] | None, *paths: str | os.PathLike[str],
              kind: str = FILES_KIND) -> Iterator[None]:
    """``with recording(out, out / "rows/k.json"): write(...)``: list the paths as
    pending, let the block write them, then record what was written (see
    :func:`record_written`). ``root=None`` records nothing."""
    if root is None:
        yield
        return
    record_written(root, *paths, kind=kind, pending=True)
    try:
        yield
    finally:
        record_written(root, *paths, kind=kind)


def _relative(root: Path, path: Path) -> str:
    """``path`` (under ``root``, or already relative to it) as a relative POSIX path."""
    path = path.expanduser()
    for a, b in ((path, root), (Path(os.path.realpath(path)), Path(os.path.realpath(root)))):
        try:
            return a.relative_to(b).as_posix()
        except ValueError:
            pass
    if path.is_absolute():
        raise ValueError(f"{path} is not under {root}")
    return path.as_posix()


def check_owned_file(directory: str | os.PathLike[str], name: str, *, kind: str, option: str) -> Ownership:
    """May replaceme (re)write the file ``name`` inside ``directory``? Only when the
    directory is replaceme's own output of ``kind`` and ``name`` is absent, or listed
    and unchanged."""
    directory = Path(directory).expanduser()
    own = read_ownership(directory)
    if own is None or own.kind != kind or own.legacy:
        raise ReplacemeError(f"{option}: {directory} is not a {kind.replace('-', ' ')} written by replaceme; "
                             "only replaceme's own outputs are written to")
    if not own.owns(directory, name):
        raise ReplacemeError(f"{option}: {directory / name} was not written by replaceme, or was changed "
                             "since; refusing to replace it")
    return own


def claim(directory: str | os.PathLike[str], names: Iterable[str]) -> None:
    """Add files replaceme has just written in its own ``directory`` to its record."""
    record_written(directory, *names)
