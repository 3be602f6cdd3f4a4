"""Where replaceme keeps its caches: the one resolver every cache uses.

``$REPLACEME_CACHE``, else ``$XDG_CACHE_HOME/replaceme``, else ``~/.cache/replaceme``
(``~`` expanded the same way everywhere). The statistics cache
(:mod:`replaceme.stats.cache`) and the demo model (:mod:`replaceme.demo.subject`)
live under it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The cache root joined with ``parts``; ``root`` (if given) replaces the environment's choice."""
    if root is None:
        root = os.environ.get("REPLACEME_CACHE") or None
    if root is None:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path("~") / ".cache")
        root = Path(xdg) / "replaceme"
    return Path(os.path.expanduser(root)).joinpath(*parts)
