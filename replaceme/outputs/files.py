"""Single files that appear atomically: a unique temporary beside the target, then a rename."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from replaceme.outputs.failures import writing
from replaceme.outputs.rename import raced, rename_noreplace
from replaceme.outputs.runs import ordinary_permissions, temp_name


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
        with writing(target):
            yield tmp
        ordinary_permissions(tmp)
        if replace:
            os.replace(tmp, target)
        else:
            try:
                rename_noreplace(tmp, target)
            except FileExistsError:
                raise raced(target) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str, *, replace: bool = True) -> None:
    """Write ``text`` to ``path`` through a unique temporary file and a rename."""
    with atomic_file(path, replace=replace) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, replace: bool = True) -> None:
    """Write ``data`` as indented JSON to ``path`` (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n", replace=replace)
