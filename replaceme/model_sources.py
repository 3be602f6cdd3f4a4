"""Named models that are neither a local directory nor a hub id: registered sources.

A package registers a model under a short name as an entry point of the
``replaceme.models`` group, pointing at a callable that returns the model's local
directory (building or downloading it first if needed)::

    [project.entry-points."replaceme.models"]
    demo = "replaceme.demo:demo_model_dir"

Every command then accepts that name wherever it takes a model (``replaceme compare
demo``), and the loader reaches the model through this table without importing the
package that provides it. Names are matched case-insensitively; a registered name wins
over a local directory of the same name, which stays reachable as ``./name``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError, first_line

#: the entry-point group of model sources
GROUP = "replaceme.models"


@functools.cache
def _sources() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name.lower(): ep for ep in importlib.metadata.entry_points(group=GROUP)}


def source_names() -> list[str]:
    """The registered model names."""
    return sorted(_sources())


def registered_name(model: Any) -> str | None:
    """The registered source ``model`` names (a string, case-insensitive), or None
    for a path or hub id."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    text = os.fspath(model).strip().lower()
    return text if text in _sources() else None


def source_dir(name: str) -> Path:
    """The local directory of the registered model ``name`` (its callable may build it)."""
    entry = _sources()[name.strip().lower()]
    try:
        provider = entry.load()
    except Exception as exc:  # a broken provider must name itself, in one line
        raise ReplacemeError(f"model source '{entry.name}' ({entry.value}) failed to load: {first_line(exc)}") from exc
    return Path(provider())
