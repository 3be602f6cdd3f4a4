"""Write failures that name their real cause: a full disk, a file-size limit or a
quota is "no space left on <file system> while writing OUTPUT" (not a corrupt input),
and a permission error names the path and what was being done to it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError, no_space

def filesystem(path: str | os.PathLike[str]) -> Path:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    p = Path(os.path.realpath(os.path.expanduser(os.fspath(path))))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def write_failure(exc: BaseException, target: Any, operation: str) -> ReplacemeError | None:
    """A one-line error naming the real cause of a failed write of ``target``, or None
    when ``exc`` is not a write failure this module knows."""
    if isinstance(exc, ReplacemeError):
        return None
    reason = no_space(exc)
    if reason is not None:
        return ReplacemeError(f"no space left on {filesystem(target)} while writing {target} ({reason}); "
                              "free some space, raise the limit, or write elsewhere")
    link: BaseException | None = exc
    for _ in range(20):
        if link is None:
            break
        if isinstance(link, PermissionError):
            where = link.filename if link.filename is not None else target
            return ReplacemeError(f"permission denied while {operation} {where} (writing {target}): "
                                  f"{link.strerror or link}")
        link = link.__cause__ or link.__context__
    return None


@contextlib.contextmanager
def writing(target: Any, operation: str = "writing") -> Iterator[None]:
    """Turn a failed write inside the block into :func:`write_failure`'s one line."""
    try:
        yield
    except Exception as exc:
        error = write_failure(exc, target, operation)
        if error is None:
            raise
        raise error from exc
