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


def temp_name(target: Path, suffix: str) -> Path:
    """A name beside ``target`` unique to this run: ``.NAME.replaceme-<host>-<pid>-<random><suffix>``."""
    return target.with_name(f".{target.name}.{TAG}-{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _temp_owner_pid(name: str, target: Path) -> int | None:
    """The pid in a temporary name of ``target`` made on this host, else None."""
    prefix = f".{target.name}.{TAG}-{host_tag()}-"
    if not name.startswith(prefix):
        return None
    pid = name[len(prefix):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def clean_stale(target: Path) -> list[Path]:
    """Remove temporaries of ``target`` left by killed runs; report those of unknown owners.

    A temporary is ours when its name is a :func:`temp_name` of ``target``. It is
    stale when its owner process (the owner file inside a directory, else the
    pid in the name) is gone. Anything else is left alone.
    """
    removed: list[Path] = []
    parent = target.parent
    if not parent.is_dir():
        return removed
    for entry in parent.glob(f".{glob.escape(target.name)}.{TAG}-*"):
        if entry.name.endswith(".lock"):
            continue
        owner = read_owner(entry / OWNER_FILE) if entry.is_dir() and not entry.is_symlink() else None
        if owner is None:
            pid = _temp_owner_pid(entry.name, target)
            if pid is None:
                log.warning("found %s, left by a replaceme run on another machine; remove it if no run is active", entry)
                continue
            owner = {"pid": pid, "host": socket.gethostname()}
        if is_alive(owner):
            continue
        log.warning("removing %s, left behind by an interrupted replaceme run (pid %s)", entry, owner.get("pid"))
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
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
