"""Versions and environment recorded with every result."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

_PACKAGES = ("replaceme", "torch", "transformers", "datasets", "lm-eval", "pluggy", "safetensors", "accelerate")


def versions() -> dict[str, Any]:
    """Installed versions of the packages that shape results (no imports)."""
    out: dict[str, Any] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


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
