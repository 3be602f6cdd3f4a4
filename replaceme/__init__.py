"""replaceme: depth pruning of transformer language models.

Remove blocks of consecutive decoder layers from a Hugging Face causal LM, with
or without compensation (ReplaceMe, arXiv 2505.02819; UIDL; LLM-Streamline), and
compare methods fairly. Importing this package does not import torch.

    >>> import replaceme
    >>> result = replaceme.prune("path/to/model", method="replaceme-lstsq", layers=8,
    ...                          calibration="calib.txt")
    >>> replaceme.save_pruned(result, "pruned/")
"""

from __future__ import annotations

from typing import Any

from replaceme.errors import ReplacemeError
from replaceme.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["prune", "save_pruned", "CalibrationSpec", "ReplacemeError", "hookimpl", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("prune", "save_pruned", "PruneResult"):
        from replaceme import api

        return getattr(api, name)
    if name == "CalibrationSpec":
        from replaceme.calibration import CalibrationSpec

        return CalibrationSpec
    raise AttributeError(name)
