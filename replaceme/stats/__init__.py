"""The shared statistics pass: one forward pass over the calibration data,
from which every method of a run selects and compensates.

``StatsRequest`` is importable without torch; the rest loads lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replaceme.stats.request import StatsRequest

if TYPE_CHECKING:
    from replaceme.stats.collect import collect_stats
    from replaceme.stats.store import ActivationSample, ActivationStats, BatchActivations

__all__ = ["StatsRequest", "ActivationStats", "ActivationSample", "BatchActivations", "collect_stats"]


def __getattr__(name: str) -> Any:
    if name in ("ActivationStats", "ActivationSample", "BatchActivations"):
        from replaceme.stats import store

        return getattr(store, name)
    if name == "collect_stats":
        from replaceme.stats.collect import collect_stats

        return collect_stats
    raise AttributeError(name)
