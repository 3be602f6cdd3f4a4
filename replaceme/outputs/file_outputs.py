"""A file option (``--csv``, ``--plot``): checked before the work, locked during it,
written atomically."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from replaceme.outputs.checks import check_output, resolve
from replaceme.outputs.lock import output_lock
from replaceme.outputs.ownership import record_written
from replaceme.outputs.runs import clean_stale


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
    :func:`~replaceme.outputs.files.atomic_file`: ``with output_file(csv, option="--csv") as path: ...``.

    The lock is held until the block ends; the file written is then listed in the
    record of its folder (:func:`~replaceme.outputs.ownership.record_written`), so
    that a later ``--overwrite`` may replace it while it is unchanged. ``None``
    passes through (the option was not given).
    """
    if target is None:
        yield None
        return
    check_output(target, kind="file", inputs=inputs, overwrite=overwrite, option=option, suffixes=suffixes)
    resolved = resolve(target)
    with output_lock(target, option=option):
        clean_stale(resolved)
        yield Path(target).expanduser()
        if resolved.is_file() and not resolved.is_symlink():
            record_written(resolved.parent, resolved)
