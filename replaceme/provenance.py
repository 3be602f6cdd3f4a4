"""Versions and environment recorded with every result."""

from __future__ import annotations

import importlib.metadata
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
