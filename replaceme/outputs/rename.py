"""Renames that never replace what another run has just put in place."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError

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


def raced(target: Any) -> ReplacemeError:
    """The error of a run whose output another run wrote first."""
    return ReplacemeError(f"{target} was written by another run while this one was working; "
                          "its output was kept and this run's was discarded")
