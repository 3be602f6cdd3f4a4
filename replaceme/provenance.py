"""Versions, code origin and environment recorded with every result.

- :func:`versions`: the installed versions of the packages that shape results;
- :func:`project`: replaceme's own version and, when it runs from a git
  checkout, the commit (and whether the checkout had uncommitted changes);
- :func:`distribution_of`: the installed distribution (name and version) that
  provides a plugin component, found through the ``replaceme`` entry points
  (then through ``importlib.metadata.packages_distributions``), so that every
  artifact can name the third-party code that produced it;
- :func:`device_info`: where it ran.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

_PACKAGES = ("replaceme", "torch", "transformers", "datasets", "lm-eval", "pluggy", "safetensors", "accelerate")
#: entry point group of replaceme plugins
ENTRY_POINT_GROUP = "replaceme"


def versions() -> dict[str, Any]:
    """Installed versions of the packages that shape results (no imports)."""
    out: dict[str, Any] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def project() -> dict[str, Any]:
    """``{"version": ..., "git_revision": ..., "git_dirty": ...}`` of replaceme itself.

    The revision is known only when the package is imported from a git checkout
    (an editable install); otherwise it is None.
    """
    try:
        version = importlib.metadata.version("replaceme")
    except importlib.metadata.PackageNotFoundError:
        version = None
    root = Path(__file__).resolve().parents[1]
    revision = dirty = None
    if (root / ".git").exists():
        try:
            revision = _git(root, "rev-parse", "HEAD") or None
            dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no")) if revision else None
        except (OSError, subprocess.SubprocessError):
            revision = dirty = None
    return {"version": version, "git_revision": revision, "git_dirty": dirty}


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.strip()


@functools.lru_cache(maxsize=1)
def _plugin_distributions() -> dict[str, tuple[str, str]]:
    """Top-level module of every ``replaceme`` entry point -> (distribution, version)."""
    out: dict[str, tuple[str, str]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.dist is not None:
            out[ep.module.split(".")[0]] = (ep.dist.name, ep.dist.version)
    return out


def distribution_of(obj: Any) -> dict[str, Any]:
    """``{"distribution": name, "version": version}`` of the installed package that defines
    ``obj`` (a component instance or class); both None when no installed distribution does
    (a component registered from a script or a test)."""
    module = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", "")
    top = module.split(".")[0]
    found = _plugin_distributions().get(top)
    if found is None:
        names = importlib.metadata.packages_distributions().get(top) or []
        if names:
            try:
                found = (names[0], importlib.metadata.version(names[0]))
            except importlib.metadata.PackageNotFoundError:
                found = None
    return {"distribution": found[0], "version": found[1]} if found else {"distribution": None, "version": None}


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"machine": platform.machine(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name(0)
    return info


#: bytes of a file's beginning hashed by :func:`file_fingerprint`
HEAD_BYTES = 1 << 20


def file_fingerprint(path: str | os.PathLike[str], *, head: int | None = HEAD_BYTES) -> dict[str, Any] | None:
    """What identifies a file's content cheaply: size, modification time and the
    SHA-256 of its first ``head`` bytes (every byte with ``head=None``).

    Used in cache and resume keys, so that a file changed in place (same name)
    recomputes what depends on it. None when ``path`` is not a regular file.
    """
    import hashlib
    import stat

    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    digest = hashlib.sha256()
    remaining = info.st_size if head is None else min(head, info.st_size)
    try:
        with open(path, "rb") as f:
            while remaining > 0:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
    except OSError:
        return None
    key = "sha256" if head is None else f"sha256_head_{head}"
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, key: digest.hexdigest()}
