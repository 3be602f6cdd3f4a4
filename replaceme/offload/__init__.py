"""Running a model that is never whole in memory (``--offload``, GUIDE §5).

- :mod:`~replaceme.offload.skeleton`: the model's module tree on the meta device
  over its safetensors checkpoint; layers materialised one at a time; the pruned
  checkpoint written by streaming.
- :mod:`~replaceme.offload.engine`: the one layer-by-layer execution engine that
  the statistics pass, plan scoring, perplexity, lm-eval and ``distances`` share.
- :mod:`~replaceme.offload.window`: where activations wait between layers (files).
- :mod:`~replaceme.offload.budget`: how many calibration tokens' activations one
  sweep over the layers may keep, within the memory and disk budgets.

This package sits with the model layer: it imports nothing from the statistics,
the methods or the evaluation, which use it.
"""

from __future__ import annotations

from replaceme.offload.load import load_offloaded
from replaceme.offload.skeleton import OffloadedModel, free_parameters

__all__ = ["OffloadedModel", "free_parameters", "load_offloaded"]
