"""Output directories that appear atomically: written under a temporary name
beside the target and renamed into place.

The replacement sequence, and what a kill at each point leaves:

1. the new output is written in ``.NAME.replaceme-<host>-<pid>-<random>.partial``
   (killed: the old output is untouched; the next run removes the partial one);
2. the old output is renamed to ``.NAME.replaceme-<host>-<pid>-<random>.old``
   (killed before step 3: no output in place, the old one whole under that name;
   the next run that writes or checks this output **restores** it);
3. the new output is renamed into place (``renameat2(RENAME_NOREPLACE)`` on Linux:
   it never lands on an output another run has just placed);
4. the old output is deleted (killed: the next run finishes deleting it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError
from replaceme.outputs.checks import check_output, resolve
from replaceme.outputs.failures import writing
from replaceme.outputs.lock import output_lock, signals_deferred
from replaceme.outputs.ownership import Ownership, read_ownership, record_tree, write_record
from replaceme.outputs.rename import raced, rename_noreplace
from replaceme.outputs.runs import OWNER_FILE, clean_stale, ordinary_permissions, run_owner, temp_name

#: the kind recorded for an output directory whose caller names none
OUTPUT_KIND = "output"


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
            raise raced(target) from None
        return
    if target.is_dir() and not any(target.iterdir()):  # an empty folder: rename over it (fails if it filled)
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise raced(target) from None
            raise
        return
    if not replace:
        raise raced(target)
    backup: Path | None = temp_name(target, ".old")  # recoverable until step 4 (see the module docstring)
    try:
        os.rename(target, backup)
    except FileNotFoundError:  # another run moved it away first
        backup = None
    try:
        rename_noreplace(tmp, target)
    except FileExistsError:
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
        raise raced(target) from None
    except BaseException:  # an interrupt or an error between the two renames: put the old one back
        if backup is not None and not os.path.lexists(target):
            with contextlib.suppress(OSError):
                rename_noreplace(backup, target)
        raise
    if backup is not None:
        deferred = signals_deferred()  # the new output is in place: finish deleting the old one first
        try:
            shutil.rmtree(backup, ignore_errors=True)
        finally:
            deferred.close()


def _make_temp_dir(tmp: Path) -> None:
    tmp.mkdir()
    ordinary_permissions(tmp)
    (tmp / OWNER_FILE).write_text(json.dumps(run_owner()), encoding="utf-8")


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
            :func:`~replaceme.outputs.checks.check_output`).
        inputs: paths the run reads; ``target`` may not touch them.
        marker: ``(file name, kind)``: the kind of output (``pruned-model``, ...)
            recorded, with every file written (size, time, SHA-256), in the
            folder's record, so that a later ``--overwrite`` may replace it while
            it is unchanged (the file name is kept for compatibility).
        checked: apply ``check_output``; only replaceme's own caches pass False.
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
        tmp = temp_name(target, ".partial")
        try:  # from its creation on: an interrupt at any point removes it
            with writing(target, "creating a temporary folder beside"):
                _make_temp_dir(tmp)
            with writing(target):
                yield tmp
            (tmp / OWNER_FILE).unlink()
            if checked:
                record_tree(tmp, kind or OUTPUT_KIND)
            ordinary_permissions(tmp)
            if checked:  # what is there may have changed while we worked
                if not existed and os.path.lexists(target) and any(target.iterdir()):
                    raise raced(target)
                check_output(target, kind="dir", inputs=items, overwrite=overwrite, option=option, owner_kind=kind)
            with writing(target, "renaming into place"):
                place_directory(tmp, target, replace=overwrite or not checked)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def set_aside(target: Path) -> Path:
    """Move a directory that ``check_output`` found to be replaceme's, unchanged, to a
    unique ``.old`` name beside it, check it again there, and return that name; the
    caller writes the new output at ``target``, records the backup there with
    :func:`mark_replacing`, and deletes it with :func:`finish_replacement` once the new
    output is complete. Until then a later run keeps it (or restores it when nothing
    is at ``target``)."""
    backup = temp_name(target, ".old")
    os.rename(target, backup)
    own = read_ownership(backup)
    foreign = own.foreign(backup) if own and not own.legacy else ["(no ownership record)"]
    if foreign:
        rename_noreplace(backup, target)
        raise ReplacemeError(f"{target} changed while checking it ({', '.join(foreign[:3])}); left as it was")
    return backup


def mark_replacing(target: Path, backup: Path, kind: str) -> None:
    """Record in ``target``'s record that it replaces ``backup`` (see :func:`set_aside`)."""
    own = read_ownership(target) or Ownership(kind)
    own.replacing = backup.name
    write_record(target, own)


def finish_replacement(target: Path) -> None:
    """The output at ``target`` is complete: delete the previous one it replaced, if any."""
    own = read_ownership(target)
    if own is None or not own.replacing:
        return
    shutil.rmtree(target.parent / own.replacing, ignore_errors=True)
    own.replacing = None
    write_record(target, own)


def discard_directory(target: Path) -> None:
    """Delete a directory that ``check_output`` found to be replaceme's, unchanged
    (:func:`set_aside`, then removed)."""
    shutil.rmtree(set_aside(target), ignore_errors=True)
