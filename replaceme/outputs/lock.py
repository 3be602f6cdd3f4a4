"""One run per output: a lock file beside it, held for the whole run.

The lock is ``.NAME.replaceme.lock`` beside the output, taken with the
``filelock`` package (an OS lock: ``flock`` on Linux and macOS, released by the
kernel when the process dies), and it records who holds it (host, pid, start
time) so that messages can say so. A lock file whose OS lock is free, yet which
records another holder, was left by a run that did not finish:

- a holder on this host whose process is gone is taken over (with a warning);
- a holder on another host (a container, another cluster node: its process
  cannot be checked from here) is taken over once its record is older than
  :data:`STALE_AFTER_S` (24 hours; ``$REPLACEME_LOCK_STALE_HOURS`` changes it),
  or at once with ``--break-lock``.

A lock whose OS lock is held belongs to a live run and is never taken, except
with ``--break-lock`` (for file systems that keep locks of dead clients).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError
from replaceme.outputs.checks import resolve
from replaceme.outputs.runs import TAG, is_alive, make_parents, read_owner, remove_if_empty, run_owner, short_name

log = logging.getLogger("replaceme.outputs")

#: a lock recorded by a run on another host is taken over after this many seconds
STALE_AFTER_S = 24 * 3600.0

_held: dict[Path, int] = {}
_breaking: contextvars.ContextVar[bool] = contextvars.ContextVar("replaceme_break_lock", default=False)


@contextlib.contextmanager
def breaking_locks(enabled: bool = True) -> Iterator[None]:
    """Within this block, :func:`output_lock` takes over locks held by other runs
    (the command line's ``--break-lock``)."""
    token = _breaking.set(bool(enabled))
    try:
        yield
    finally:
        _breaking.reset(token)


def lock_path(target: Path) -> Path:
    """The lock file of the (resolved) output ``target``."""
    return target.with_name(f".{short_name(target)}.{TAG}.lock")


def stale_after_s() -> float:
    """:data:`STALE_AFTER_S`, or ``$REPLACEME_LOCK_STALE_HOURS`` hours when set to a number."""
    text = os.environ.get("REPLACEME_LOCK_STALE_HOURS", "").strip()
    try:
        return float(text) * 3600.0 if text else STALE_AFTER_S
    except ValueError:
        return STALE_AFTER_S


def _describe(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "another replaceme run"
    started = owner.get("started")
    since = (f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"
             if isinstance(started, (int, float)) and 0 < started < 4e9 else "")
    return f"another replaceme run (pid {owner.get('pid')} on {owner.get('host')}{since})"


def _left_over(owner: dict[str, Any] | None, break_lock: bool) -> bool:
    """May a recorded holder whose OS lock is free be replaced?"""
    if not owner or break_lock or owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        return True
    if owner.get("host") == socket.gethostname():
        return not is_alive(owner)
    started = owner.get("started")
    return not isinstance(started, (int, float)) or time.time() - started > stale_after_s()


class _Lock:
    """An acquired lock on one output (see the module's docstring)."""

    def __init__(self, lock: Path, target: Any, option: str, break_lock: bool):
        import filelock

        self.path, self.target, self.option = lock, target, option
        self._os_lock = filelock.FileLock(str(lock))
        try:
            self._os_lock.acquire(timeout=0)
        except filelock.Timeout:
            owner = read_owner(lock)
            if not break_lock:
                raise self._busy(owner) from None
            log.warning("--break-lock: removing the lock %s of %s", lock, _describe(owner))
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            try:
                self._os_lock = filelock.FileLock(str(lock))
                self._os_lock.acquire(timeout=0)
            except filelock.Timeout:
                raise self._busy(read_owner(lock)) from None
        except OSError as exc:
            raise ReplacemeError(f"cannot create the lock file {lock} for {option} {target} "
                                 f"({exc.strerror or exc})") from None
        owner = read_owner(lock)
        if owner and not _left_over(owner, break_lock):
            self._os_lock.release()
            raise self._busy(owner, stale=True)
        if owner and owner.get("pid") != os.getpid():
            log.warning("taking over the lock %s left by %s, which did not finish", lock,
                        _describe(owner).replace("another replaceme run", "a replaceme run"))
        self.owner = run_owner()
        try:
            with open(lock, "w", encoding="utf-8") as fh:
                json.dump(self.owner, fh)
        except OSError as exc:
            self._os_lock.release()
            raise ReplacemeError(f"cannot write the lock file {lock} for {option} {target} "
                                 f"({exc.strerror or exc})") from None

    def _busy(self, owner: dict[str, Any] | None, stale: bool = False) -> ReplacemeError:
        hint = (f"; if no run is active there, rerun with --break-lock (or wait: a lock from another host "
                f"is taken over after {stale_after_s() / 3600:g} hours)" if stale else "")
        return ReplacemeError(f"{_describe(owner)} is writing {self.target} (lock file {self.path}); wait for it "
                              f"to finish, or choose another {self.option}{hint}")

    def release(self) -> None:
        """Remove the lock file (when it is still ours) and release the OS lock; never raises."""
        try:
            if read_owner(self.path) == self.owner:
                self.path.unlink()
        except OSError as exc:
            log.warning("could not remove the lock file %s (%s)", self.path, exc.strerror or exc)
        with contextlib.suppress(Exception):
            self._os_lock.release()


class signals_deferred:  # noqa: N801 - used like a function (a context that can end early)
    """Block SIGINT, SIGTERM and SIGHUP (main thread, where available) until :meth:`close`;
    a signal that arrives meanwhile is delivered then."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))

    def __init__(self) -> None:
        self.old: Any = None
        if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
            self.old = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)

    def close(self) -> None:
        if self.old is not None:
            old, self.old = self.old, None
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str], option: str = "--output", *,
                break_lock: bool | None = None) -> Iterator[Path]:
    """Hold ``.NAME.replaceme.lock`` beside ``target`` for the whole run.

    A second run that wants the same output gets a one-line error at once that
    names the lock file; a lock left by a run that did not finish is taken over
    (see the module's docstring), and any lock with ``break_lock`` (default: as
    set by :func:`breaking_locks`). Re-entrant within one process.
    """
    if break_lock is None:
        break_lock = _breaking.get()
    resolved = resolve(target)
    lock = lock_path(resolved)
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
    deferred = signals_deferred()  # taking the lock is not interrupted half-way (SIGTERM, Ctrl-C)
    try:
        held = _Lock(lock, target, option, break_lock)
    except BaseException:
        deferred.close()
        remove_if_empty(created)
        raise
    _held[lock] = 1
    try:
        deferred.close()  # a signal that came meanwhile is raised here, where the lock is released
        yield lock
    finally:
        _held.pop(lock, None)
        deferred = signals_deferred()  # nor is releasing it
        try:
            held.release()
        finally:
            deferred.close()
        if not os.path.lexists(resolved):  # the run wrote nothing: leave no folder it made
            remove_if_empty(created)
