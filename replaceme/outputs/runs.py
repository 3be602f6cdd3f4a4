"""Who is writing: the identity of a run, its temporary names, and the cleanup of
leftovers of runs that were killed.

A run is ``{pid, host, started}``. Its temporaries beside an output are named
``.NAME.replaceme-<host>-<pid>-<random><suffix>`` (directories also hold an owner
file :data:`OWNER_FILE`), so a later run can tell a live run's work from a killed
one's: a temporary whose owner process is gone on this host is removed.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("replaceme.outputs")

#: owner file inside a temporary directory of a running (or killed) run
OWNER_FILE = ".replaceme-owner.json"
#: the ownership record's file name, in the folder it describes (see :mod:`replaceme.outputs.ownership`)
RECORD_FILE = ".replaceme-record.json"
TAG = "replaceme"


def host_tag() -> str:
    """A short, file-name-safe tag of this host."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def run_owner() -> dict[str, Any]:
    """This run's identity: pid, host name and start time."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}


def is_alive(owner: dict[str, Any]) -> bool:
    """Whether the process that wrote ``owner`` still runs (unknown hosts count as alive)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.Error:
        return True
    started = owner.get("started")
    return not (isinstance(started, (int, float)) and created > started + 1.0)  # a reused pid is not the owner


def read_owner(path: Path) -> dict[str, Any] | None:
    """The owner record stored in ``path`` (JSON), or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_permissions(path: Path) -> None:
    """Give ``path`` (and, for a directory, everything in it) the modes the umask allows."""
    mask = _umask()
    if path.is_dir() and not path.is_symlink():
        os.chmod(path, 0o777 & ~mask)
        for root, dirs, files in os.walk(path):
            for d in dirs:
                if not os.path.islink(os.path.join(root, d)):
                    os.chmod(os.path.join(root, d), 0o777 & ~mask)
            for f in files:
                full = os.path.join(root, f)
                if not os.path.islink(full):
                    os.chmod(full, 0o666 & ~mask)
    elif not path.is_symlink():
        os.chmod(path, 0o666 & ~mask)


def short_name(target: Path) -> str:
    """``target``'s name as used in its temporaries and lock: itself when short, else
    a prefix and a hash, so that a valid long output name never makes a too-long temporary."""
    name = target.name
    if len(os.fsencode(name)) <= 100:
        return name
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:12]
    return os.fsdecode(os.fsencode(name)[:40]).rstrip("\ufffd") + "~" + digest


def _prefix(target: Path) -> str:
    return f".{short_name(target)}.{TAG}-"


def temp_name(target: Path, suffix: str) -> Path:
    """A name beside ``target`` unique to this run: ``.NAME.replaceme-<host>-<pid>-<random><suffix>``
    (a long ``NAME`` is shortened by :func:`short_name`; a long ``suffix`` is dropped)."""
    if len(suffix) > 24:
        suffix = ".tmp"
    return target.with_name(f"{_prefix(target)}{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _temp_owner_pid(name: str, target: Path) -> int | None:
    """The pid in a temporary name of ``target`` made on this host, else None."""
    prefix = f"{_prefix(target)}{host_tag()}-"
    if not name.startswith(prefix):
        return None
    pid = name[len(prefix):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


def _restore(entry: Path, target: Path) -> bool:
    """Put back a previous output that a killed run had moved aside (``target`` is absent)."""
    from replaceme.outputs.rename import rename_noreplace

    with contextlib.suppress(FileNotFoundError):
        (entry / OWNER_FILE).unlink()
    try:
        rename_noreplace(entry, target)
    except OSError:
        return False
    log.warning("restored %s from %s: a run that was replacing it was interrupted before its new output was "
                "in place", target, entry.name)
    return True


def _stale(entry: Path, target: Path) -> dict[str, Any] | None:
    """The owner of the temporary ``entry`` of ``target`` when that run is gone from this host, else None."""
    owner = read_owner(entry / OWNER_FILE) if entry.is_dir() and not entry.is_symlink() else None
    if owner is None:
        pid = _temp_owner_pid(entry.name, target)
        if pid is None:
            return None
        owner = {"pid": pid, "host": socket.gethostname()}
    return None if is_alive(owner) else owner


def _temporaries(target: Path) -> list[Path]:
    parent = target.parent
    if not parent.is_dir():
        return []
    return sorted((p for p in parent.glob(f"{glob.escape(_prefix(target))}*") if not p.name.endswith(".lock")),
                  key=lambda p: p.name)


def replaced_by(target: Path) -> str | None:
    """The name of the previous output that ``target`` is still replacing (kept until
    the new one is complete: see ``directories.set_aside``), else None."""
    record = read_owner(target / RECORD_FILE)
    name = record.get("replacing") if record else None
    return name if isinstance(name, str) else None


def restore_orphan(target: Path) -> bool:
    """When no output is at ``target`` (or only an empty folder a killed run had just
    made) but a killed run left the previous one moved aside (``.old``), put it back
    (with a warning); True when one was restored."""
    if os.path.lexists(target) and not (target.is_dir() and not target.is_symlink()):
        return False
    orphans = [e for e in _temporaries(target) if e.name.endswith(".old") and _stale(e, target) is not None]
    if not orphans:
        return False
    if os.path.lexists(target):
        if any(target.iterdir()):
            return False
        with contextlib.suppress(OSError):
            target.rmdir()  # empty: it holds nothing
    return any(_restore(entry, target) for entry in orphans)  # stops at the first restored


def clean_stale(target: Path) -> list[Path]:
    """Tidy what killed runs left beside ``target``; return the temporaries removed.

    A temporary is ours when its name is a :func:`temp_name` of ``target``. It is
    stale when its owner process (the owner file inside a directory, else the
    pid in the name) is gone from this host. A stale previous output (``.old``)
    is **restored** when no output is in place (the run died between moving it
    aside and moving its new output in), and removed only when one is; other
    stale temporaries are removed. Anything else is left alone.
    """
    restore_orphan(target)
    removed: list[Path] = []
    for entry in _temporaries(target):
        if _stale(entry, target) is None:
            if _temp_owner_pid(entry.name, target) is None and read_owner(entry / OWNER_FILE) is None:
                log.warning("found %s, left by a replaceme run on another machine; remove it if no run is active",
                            entry)
            continue
        if entry.name.endswith(".old") and not os.path.lexists(target):
            continue  # could not be restored: keep it
        if entry.name.endswith(".old") and replaced_by(target) == entry.name:
            log.warning("keeping %s, the previous %s: the run replacing it did not finish (it is deleted once "
                        "a run completes the new one)", entry, target.name)
            continue
        log.warning("removing %s, left behind by an interrupted replaceme run", entry)
        _remove(entry)
        removed.append(entry)
    return removed


def make_run_dir(parent: str | os.PathLike[str] | None, prefix: str = f"{TAG}-") -> Path:
    """A new directory for this run's temporaries (``--offload`` activations, spills):
    ``<parent>/<prefix><host>-<pid>-<random>``, private to the user, holding an owner
    file. Directories of this scheme in ``parent`` whose run is gone from this host
    are removed first (:func:`clean_stale_runs`). ``parent`` defaults to the system's
    temporary folder (``$TMPDIR``); ``~`` is expanded."""
    import tempfile

    root = Path(os.path.expanduser(os.fspath(parent))) if parent is not None else Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    clean_stale_runs(root)
    path = root / f"{prefix}{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    (path / OWNER_FILE).write_text(json.dumps(run_owner()), encoding="utf-8")
    return path


def clean_stale_runs(parent: Path) -> list[Path]:
    """Remove what runs gone from this host left in ``parent``: run directories
    (:func:`make_run_dir`), and unfinished temporaries (:func:`temp_name`: files
    ``*.tmp*`` and directories ``*.partial``; never a previous output ``*.old``)."""
    temporary = re.compile(rf"^\..+\.{TAG}-{host_tag()}-(\d+)-[0-9a-f]{{8}}(\.tmp.*|\.partial)$")
    removed = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = temporary.match(entry.name)
        if match:
            owner: dict[str, Any] | None = {"pid": int(match.group(1)), "host": socket.gethostname()}
        elif entry.name.startswith(TAG) and entry.is_dir() and not entry.is_symlink():
            owner = read_owner(entry / OWNER_FILE)
        else:
            continue
        if owner is None or owner.get("host") != socket.gethostname() or is_alive(owner):
            continue
        log.warning("removing %s, left behind by an interrupted replaceme run (pid %s)", entry, owner.get("pid"))
        _remove(entry)
        removed.append(entry)
    return removed


def make_parents(path: Path) -> list[Path]:
    """Create the missing folders above ``path``; return those created (deepest first)."""
    created = []
    for ancestor in path.parents:
        if os.path.lexists(ancestor):
            break
        created.append(ancestor)
    for folder in reversed(created):
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
    return created


def remove_if_empty(folders: Iterable[Path]) -> None:
    """Remove folders this run created, deepest first, if nothing was put in them."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
