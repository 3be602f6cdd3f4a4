"""Distance tables of every candidate block, and optionally what each costs after
compensation, as a pandas DataFrame."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replaceme.stats.store import ActivationStats


def candidate_blocks(num_layers: int, max_size: int) -> list[Any]:
    """Every block ``[s, s+n)`` with ``n`` in 1..max_size and ``s >= 1``."""
    from replaceme.plan import Block

    return [Block(s, s + n) for n in range(1, max_size + 1) for s in range(1, num_layers - n + 1)]


def loss_request(method: Any, num_layers: int, max_size: int) -> Any:
    """Statistics needed to compensate and score every candidate block with ``method``."""
    from replaceme.scoring import scoring_request

    blocks = candidate_blocks(num_layers, max_size)
    first = {b.start for b in blocks} | {b.start - 1 for b in blocks}
    return method.compensator.stats_request(blocks).union(scoring_request(num_layers, first))


def distance_frame(stats: ActivationStats, max_size: int, scorer: Any = None) -> Any:
    """One row per block ``[start, start+size)``, ``size`` 1..max_size, start >= 1.

    Columns: start, end, size, distance (angular, last token), token_cosine
    (mean per-token cosine), best (smallest distance for its size). With a
    :class:`replaceme.scoring.PlanScorer` also ``loss``, ``ppl`` and ``kl``: the
    block compensated by the scorer's method and measured on the held-out
    calibration batches, and ``best_loss`` (lowest loss for its size).
    """
    import pandas as pd

    from replaceme.console import track
    from replaceme.plan import Plan

    rows = []
    blocks = candidate_blocks(stats.num_layers, max_size)
    for block in track(blocks, "scoring blocks") if scorer is not None else blocks:
        s, n = block.start, block.size
        row = {"start": s, "end": block.end, "size": n, "distance": float(stats.angular[n][s]),
               "token_cosine": float(stats.token_cosine[n][s])}
        if scorer is not None:
            score = scorer.score(Plan([block]))
            row.update(loss=score.loss, ppl=score.ppl, kl=score.kl)
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["best"] = frame["distance"] == frame.groupby("size")["distance"].transform("min")
    if scorer is not None:
        frame["best_loss"] = frame["loss"] == frame.groupby("size")["loss"].transform("min")
    return frame
