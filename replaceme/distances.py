"""Distance tables of every candidate block, as a pandas DataFrame."""

from __future__ import annotations

from typing import Any


def distance_frame(stats: Any, max_size: int) -> Any:
    """One row per block ``[start, start+size)``, ``size`` 1..max_size, start >= 1.

    Columns: start, end, size, distance (angular, last token), token_cosine
    (mean per-token cosine), best (smallest distance for its size).
    """
    import pandas as pd

    rows = []
    for n in range(1, max_size + 1):
        for s in range(1, stats.num_layers - n + 1):
            rows.append({"start": s, "end": s + n, "size": n, "distance": float(stats.angular[n][s]),
                         "token_cosine": float(stats.token_cosine[n][s])})
    frame = pd.DataFrame(rows)
    frame["best"] = frame["distance"] == frame.groupby("size")["distance"].transform("min")
    return frame
