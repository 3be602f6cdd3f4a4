"""Where replaceme keeps its caches, and how it writes the user's files safely.

The rules (one place, used by every command and by the Python API):

- **Inputs are never written.** An output may not be, contain, or lie inside
  an input (the source model directory, a calibration or perplexity file);
  paths are resolved (symlinks, ``..``) before they are compared.
- **replaceme replaces only what it created.** An existing output directory is
  replaced (with ``--overwrite``) only when it is empty, or when it carries
  replaceme's ownership record (:data:`OWNER_KEY` in its ``pruning.json`` or
  compare ``manifest.json``) and holds nothing but the files that record lists.
  A directory without that record is refused, with or without ``--overwrite``.
- **Outputs appear atomically.** A directory is written under a temporary name
  unique to the run (``.NAME.replaceme-<pid>-<random>.partial``, with an owner
  file inside) and renamed into place; a rename that would land on a directory
  another run has just created fails instead of replacing it. The previous
  output, when replaced, is moved to a unique ``.old`` name and deleted.
- **Two runs never write one output.** A lock file beside the output
  (``.NAME.replaceme.lock``, holding the owner's pid) is taken before any work;
  a second run gets a one-line error at once.
- **Leftovers of killed runs are found.** Temporaries whose owner process is
  gone are removed (with a warning) by the next run that writes the same output.
- **Ordinary permissions.** Everything written respects the umask (never the
  0600 of ``mkstemp``/``mkdtemp``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import glob
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError

log = logging.getLogger(__name__)

#: key of the ownership record in a marker file (``pruning.json``, ``manifest.json``)
OWNER_KEY = "replaceme_output"
#: files that may carry an ownership record, in the order they are looked for
MARKER_FILES = ["pruning.json", "manifest.json"]
#: owner file inside a temporary directory of a running (or killed) run
OWNER_FILE = ".replaceme-owner.json"
_TAG = "replaceme"


def cache_dir(*parts: str) -> Path:
    """``$REPLACEME_CACHE`` or ``$XDG_CACHE_HOME/replaceme`` or ``~/.cache/replaceme``, joined with ``parts``."""
    root = os.environ.get("REPLACEME_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "replaceme")
    return Path(root).expanduser().joinpath(*parts)


# --------------------------------------------------------------------------- ownership


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
    own = read_ownership(Path(directory))
    if own is None:
        return
    path = Path(directory) / own.marker
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(ownership_record(own.kind, [*own.patterns, *(literal(n) for n in names)]))
    write_json_atomic(path, data)


# --------------------------------------------------------------------------- checks


def resolve(path: str | os.PathLike[str]) -> Path:
    """Absolute path with ``~``, symlinks and ``..`` resolved (the path need not exist)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def local_inputs(*paths: Any) -> list[Path]:
    """The inputs among ``paths`` that exist on this machine (hub ids and None are skipped).

    Text sources may carry a record slice (``file.txt[:100]``); it is removed.
    """
    from replaceme.data.texts import TextSource

    out = []
    for p in paths:
        if p is None:
            continue
        for candidate in (str(p), TextSource(str(p)).base):
            if candidate and os.path.lexists(Path(candidate).expanduser()):
                out.append(resolve(candidate))
                break
    return out


def _relation(target: Path, source: Path) -> str | None:
    if target == source:
        return "is"
    if target in source.parents:
        return "contains"
    if source in target.parents:
        return "is inside"
    return None


def check_not_input(target: str | os.PathLike[str], inputs: Iterable[Any], *, option: str = "--output") -> Path:
    """Refuse ``target`` when it is, contains, or lies inside one of ``inputs``."""
    resolved = resolve(target)
    for source in local_inputs(*inputs):
        relation = _relation(resolved, source)
        if relation:
            raise ReplacemeError(f"{option} {target} {relation} the input {source}; replaceme never writes over, "
                                 f"above or into its inputs (choose another {option})")
    return resolved


def _check_parent(resolved: Path, shown: Any, option: str) -> None:
    """The nearest existing folder above ``resolved`` must be a writable directory."""
    for ancestor in resolved.parents:
        if os.path.lexists(ancestor):
            if not ancestor.is_dir():
                raise ReplacemeError(f"cannot create {option} {shown}: {ancestor} is not a directory")
            probe = ancestor / f".{_TAG}-probe-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                probe.mkdir()
                probe.rmdir()
            except OSError as exc:
                raise ReplacemeError(f"cannot write {option} {shown}: {ancestor} is not writable "
                                     f"({exc.strerror or exc})") from None
            return


@dataclass
class OutputStatus:
    """What :func:`check_output` found: the resolved path and what is there now."""

    path: Path
    exists: bool
    empty: bool = False
    ownership: Ownership | None = None


def check_output(
    target: str | os.PathLike[str],
    *,
    kind: str = "dir",
    inputs: Iterable[Any] = (),
    overwrite: bool = False,
    allow_existing: bool = False,
    option: str = "--output",
    suffixes: tuple[str, ...] = (),
    owner_kind: str | None = None,
) -> OutputStatus:
    """Decide whether ``target`` may be created (or replaced); raise a one-line error if not.

    Nothing is created. Checked, in order: the path is not empty text, not a
    symlink, not an input or above/inside one; an existing directory (``kind="dir"``)
    is empty, or is replaceme's and holds only files replaceme wrote (else refused
    even with ``overwrite``), and needs ``overwrite`` unless ``allow_existing``;
    an existing file (``kind="file"``) needs ``overwrite`` and one of ``suffixes``;
    the folder it goes into can be created and written.

    Args:
        target: the output path as the user gave it.
        kind: ``"dir"`` or ``"file"``.
        inputs: paths the run reads (non-local names are ignored).
        overwrite: the user asked to replace an existing output.
        allow_existing: the caller handles an existing replaceme directory itself
            (``compare`` resumes one).
        option: the option's name, for messages.
        suffixes: for files, the suffixes an existing file must have to be replaced.
        owner_kind: an existing replaceme directory must be of this kind (a pruned
            model is not replaced by a comparison, nor the reverse).
    """
    if not str(target).strip():
        raise ReplacemeError(f"{option} is empty")
    path = Path(target).expanduser()
    if path.is_symlink():
        raise ReplacemeError(f"{option} {target} is a symbolic link; give the real path")
    resolved = check_not_input(target, inputs, option=option)
    status = OutputStatus(resolved, exists=os.path.lexists(resolved))
    if status.exists:
        if kind == "dir":
            if not resolved.is_dir():
                raise ReplacemeError(f"{option} {target} exists and is not a directory")
            status.empty = not any(resolved.iterdir())
            if not status.empty:
                status.ownership = own = read_ownership(resolved)
                if own is None:
                    raise ReplacemeError(f"{option} {target} is not empty and was not written by replaceme; "
                                         f"refusing to replace it, with or without --overwrite (choose another {option})")
                if owner_kind is not None and own.kind != owner_kind:
                    raise ReplacemeError(f"{option} {target} holds a replaceme {own.kind.replace('-', ' ')}, not a "
                                         f"{owner_kind.replace('-', ' ')}; choose another {option}")
                foreign = own.foreign(resolved)
                if foreign:
                    shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                    raise ReplacemeError(f"{option} {target} holds files replaceme did not write ({shown}); "
                                         f"refusing to replace it (move them, or choose another {option})")
                if not overwrite and not allow_existing:
                    raise ReplacemeError(f"{option} {target} exists (use --overwrite to replace it)")
        else:
            if resolved.is_dir():
                raise ReplacemeError(f"{option} {target} is a directory, not a file")
            if not overwrite:
                raise ReplacemeError(f"{option} {target} exists (use --overwrite to replace it)")
            if suffixes and resolved.suffix.lower() not in suffixes:
                raise ReplacemeError(f"{option} {target}: refusing to replace a file that is not {'/'.join(suffixes)}")
    _check_parent(resolved, target, option)
    return status


# --------------------------------------------------------------------------- run ownership


def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the process that wrote ``owner`` still runs (unknown hosts count as alive)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
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


def _read_owner(path: Path) -> dict[str, Any] | None:
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
    return target.with_name(f".{target.name}.{_TAG}-{_host()}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _temp_owner_pid(name: str, target: Path) -> int | None:
    """The pid in a temporary name of ``target`` made on this host, else None."""
    prefix = f".{target.name}.{_TAG}-{_host()}-"
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
    removed = []
    parent = target.parent
    if not parent.is_dir():
        return removed
    for entry in parent.glob(f".{glob.escape(target.name)}.{_TAG}-*"):
        if entry.name.endswith(".lock"):
            continue
        owner = _read_owner(entry / OWNER_FILE) if entry.is_dir() and not entry.is_symlink() else None
        if owner is None:
            pid = _temp_owner_pid(entry.name, target)
            if pid is None:
                log.warning("found %s, left by a replaceme run on another machine; remove it if no run is active", entry)
                continue
            owner = {"pid": pid, "host": socket.gethostname()}
        if _alive(owner):
            continue
        log.warning("removing %s, left behind by an interrupted replaceme run (pid %s)", entry, owner.get("pid"))
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


_held: dict[Path, int] = {}


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


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str], option: str = "--output") -> Iterator[Path]:
    """Hold ``.NAME.replaceme.lock`` beside ``target`` for the whole run.

    A second run that wants the same output gets a one-line error at once; a
    lock left by a killed run is taken over. Re-entrant within one process.
    """
    resolved = resolve(target)
    lock = resolved.with_name(f".{resolved.name}.{_TAG}.lock")
    if _held.get(lock):
        _held[lock] += 1
        try:
            yield lock
        finally:
            _held[lock] -= 1
        return
    try:
        created = make_parents(resolved)
    except OSError as exc:
        raise ReplacemeError(f"cannot create {option} {target}: {exc.strerror or exc}") from None
    for _attempt in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            owner = _read_owner(lock)
            if owner is None and time.time() - _mtime(lock) < 5:  # being written right now
                time.sleep(0.2)
                owner = _read_owner(lock)
            if owner is not None and _alive(owner):
                raise ReplacemeError(f"another replaceme run (pid {owner.get('pid')} on {owner.get('host')}) is "
                                     f"writing {target}; wait for it to finish, or choose another {option}") from None
            log.warning("taking over the lock %s of an interrupted run", lock)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        except OSError as exc:
            remove_if_empty(created)
            raise ReplacemeError(f"cannot write {option} {target}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(_owner(), fh)
        break
    else:
        remove_if_empty(created)
        raise ReplacemeError(f"cannot take the lock {lock} for {option} {target}")
    _held[lock] = 1
    try:
        yield lock
    finally:
        _held.pop(lock, None)
        owner = _read_owner(lock)
        if owner is not None and owner.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        if not os.path.lexists(resolved):  # the run wrote nothing: leave no folder it made
            remove_if_empty(created)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# --------------------------------------------------------------------------- atomic placement

_RENAME_NOREPLACE = 1
_libc: Any = None


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing with :class:`FileExistsError` if ``dst`` exists.

    Atomic on Linux (``renameat2(RENAME_NOREPLACE)``); elsewhere an existence
    check followed by a rename (a small window).
    """
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    fn = getattr(_libc, "renameat2", None) if _libc else None
    if fn is not None:
        at_fdcwd = -100
        if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, os.strerror(err), str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def _raced(target: Any) -> ReplacemeError:
    return ReplacemeError(f"{target} was written by another run while this one was working; "
                          "its output was kept and this run's was discarded")


def place_directory(tmp: Path, target: Path, *, replace: bool) -> None:
    """Move the finished ``tmp`` to ``target``; with ``replace``, the existing
    ``target`` (already checked to be replaceme's) is swapped out and deleted.

    A ``target`` that appears meanwhile (another run) is never replaced: the error
    says so and this run's ``tmp`` is discarded by the caller.
    """
    if not os.path.lexists(target):
        try:
            rename_noreplace(tmp, target)
        except FileExistsError:
            raise _raced(target) from None
        return
    if target.is_dir() and not any(target.iterdir()):  # an empty folder: rename over it (fails if it filled)
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise _raced(target) from None
            raise
        return
    if not replace:
        raise _raced(target)
    backup = temp_name(target, ".old")
    try:
        os.rename(target, backup)
    except FileNotFoundError:  # another run moved it away first
        backup = None
    if backup is not None:
        with contextlib.suppress(OSError):
            (backup / OWNER_FILE).write_text(json.dumps(_owner()), encoding="utf-8")
    try:
        rename_noreplace(tmp, target)
    except FileExistsError:
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
        raise _raced(target) from None
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _make_temp_dir(target: Path) -> Path:
    tmp = temp_name(target, ".partial")
    tmp.mkdir()
    ordinary_permissions(tmp)
    (tmp / OWNER_FILE).write_text(json.dumps(_owner()), encoding="utf-8")
    return tmp


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike[str],
    overwrite: bool = False,
    *,
    inputs: Iterable[Any] = (),
    marker: tuple[str, str] | None = None,
    checked: bool = True,
    option: str = "--output",
) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it becomes ``target``.

    Args:
        target: the final directory.
        overwrite: replace an existing ``target`` (only one replaceme wrote, see
            :func:`check_output`).
        inputs: paths the run reads; ``target`` may not touch them.
        marker: ``(file name, kind)``: the JSON file (written by the caller in the
            temporary directory) that receives the ownership record listing every
            file written, so that a later ``--overwrite`` may replace it.
        checked: apply :func:`check_output`; only replaceme's own caches pass False.
        option: the option's name, for messages.

    On any error the temporary directory is removed and ``target`` is untouched.
    """
    items = list(inputs)
    target = Path(target).expanduser()
    existed = True
    kind = marker[1] if marker else None
    if checked:
        first = check_output(target, kind="dir", inputs=items, overwrite=overwrite, option=option, owner_kind=kind)
        target, existed = first.path, first.exists
    else:
        target = resolve(target)
    with output_lock(target, option=option):
        clean_stale(target)
        tmp = _make_temp_dir(target)
        try:
            yield tmp
            (tmp / OWNER_FILE).unlink()
            if marker is not None:
                name, kind = marker
                path = tmp / name
                data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
                data.update(ownership_record(kind, [literal(f) for f in listing(tmp)]))
                path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
            ordinary_permissions(tmp)
            if checked:  # what is there may have changed while we worked
                if not existed and os.path.lexists(target) and any(target.iterdir()):
                    raise _raced(target)
                check_output(target, kind="dir", inputs=items, overwrite=overwrite, option=option, owner_kind=kind)
            place_directory(tmp, target, replace=overwrite or not checked)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def discard_directory(target: Path) -> None:
    """Delete a directory that :func:`check_output` found to be replaceme's: moved
    to a unique name first, re-checked there, then removed."""
    backup = temp_name(target, ".old")
    os.rename(target, backup)
    own = read_ownership(backup)
    foreign = own.foreign(backup) if own else ["(no ownership record)"]
    if foreign:
        rename_noreplace(backup, target)
        raise ReplacemeError(f"{target} changed while checking it ({', '.join(foreign[:3])}); left as it was")
    shutil.rmtree(backup, ignore_errors=True)


# --------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_file(
    target: str | os.PathLike[str], *, replace: bool = True, suffix: str | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it becomes ``target``.

    The temporary name is unique to the run and keeps ``target``'s suffix (so
    writers that infer a format from it work). Without ``replace``, a ``target``
    that exists by then is not replaced (another run's output is kept).
    """
    target = Path(target).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target, ".tmp" + (target.suffix if suffix is None else suffix))
    try:
        yield tmp
        ordinary_permissions(tmp)
        if replace:
            os.replace(tmp, target)
        else:
            try:
                rename_noreplace(tmp, target)
            except FileExistsError:
                raise _raced(target) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str, *, replace: bool = True) -> None:
    """Write ``text`` to ``path`` through a unique temporary file and a rename."""
    with atomic_file(path, replace=replace) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, replace: bool = True) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n", replace=replace)


@contextlib.contextmanager
def output_file(
    target: str | os.PathLike[str] | None,
    *,
    overwrite: bool = False,
    inputs: Iterable[Any] = (),
    option: str,
    suffixes: tuple[str, ...] = (),
) -> Iterator[Path | None]:
    """Check a file output before the work, then yield the path to write through
    :func:`atomic_file`: ``with output_file(csv, option="--csv") as path: ...``.

    ``None`` passes through (the option was not given).
    """
    if target is None:
        yield None
        return
    check_output(target, kind="file", inputs=inputs, overwrite=overwrite, option=option, suffixes=suffixes)
    with output_lock(target, option=option):
        clean_stale(resolve(target))
        yield Path(target).expanduser()


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
