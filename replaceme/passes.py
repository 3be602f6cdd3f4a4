"""One statistics pass, or two when that keeps the statistics far smaller.

One pass gathers, for every run of a ``prune``/``compare``, what its selector and its
compensator need for *every candidate block* (ReplaceMe LSTSQ at ``-n N``: float64
``XᵀX``/``XᵀY`` for all ``L − N`` starts; the cosine and LLM-Streamline samples at
every candidate boundary). When every selector chooses from the distance tables
alone (``Selector.selects_from_tables``), two passes need much less, as the ReplaceMe
reference does it: a first pass computes the tables, each run selects its blocks, and
a second pass gathers what the compensators need for the chosen blocks only
(:mod:`replaceme.stats.estimate` gives both sizes). The cost is a second forward pass
over the calibration set (with ``--offload``: reading the checkpoint twice).

``--stats-passes auto`` (the default) takes two passes when that is possible, the one
pass would hold more than :data:`TWO_PASS_AT` bytes of statistics and two passes hold
less than half of it; ``1`` and ``2`` force the choice (``2`` is refused where a
selector scores plans). Under ``torchrun`` both passes are shared by the ranks: every
rank takes the first pass's tables, rank 0 chooses the second request and every rank
runs its shard of it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from replaceme.errors import ReplacemeError
from replaceme.stats.estimate import StatsEstimate, estimate
from replaceme.stats.request import StatsRequest

log = logging.getLogger(__name__)

#: ``auto`` takes two passes above this many bytes of one-pass statistics (1 GiB)
TWO_PASS_AT = 1 << 30
PASS_CHOICES = ("auto", "1", "2")


@dataclass
class PassPlan:
    """How the statistics of a run are gathered.

    Attributes:
        first: the request of the first (or only) pass.
        two: whether a second pass follows selection.
        one_pass, two_passes: the estimates of either way (``two_passes`` None when
            two passes are not possible).
    """

    first: StatsRequest
    two: bool
    one_pass: StatsEstimate
    two_passes: StatsEstimate | None = None

    @property
    def chosen(self) -> StatsEstimate:
        return self.two_passes if self.two and self.two_passes is not None else self.one_pass


def _selection_request(live: list, extra: StatsRequest | None, num_layers: int) -> StatsRequest:
    request = extra or StatsRequest()
    for run, _ in live:
        ctx = run.method.selection_context(num_layers, run.layers)
        request = request.union(run.method.selector.stats_request(ctx))
    return request


def _blocks_request(live: list, blocks_of: Callable[[Any], list]) -> StatsRequest:
    request = StatsRequest()
    for run, _ in live:
        request = request.union(run.method.compensator.stats_request(blocks_of(run)))
    return request


def plan_passes(live: list, extra: StatsRequest | None, request: StatsRequest, *, num_layers: int, hidden: int,
                dtype_bytes: int, slots_of: Callable[[StatsRequest], int], passes: str = "auto") -> PassPlan:
    """Choose one pass or two for ``request`` (the union of ``live`` runs' requests and
    ``extra``); ``slots_of(req)``: token slots the sample of ``req`` keeps."""
    if passes not in PASS_CHOICES:
        raise ReplacemeError(f"--stats-passes must be one of {', '.join(PASS_CHOICES)} (got {passes!r})")
    one = estimate(request, hidden=hidden, num_layers=num_layers, dtype_bytes=dtype_bytes,
                   sample_slots=slots_of(request))
    possible = bool(live) and all(run.method.selector.selects_from_tables for run, _ in live)
    if passes == "2" and not possible:
        raise ReplacemeError("--stats-passes 2 needs selectors that choose from distance tables alone; "
                             "a selector that scores plans needs every candidate's statistics in one pass")
    if not possible or passes == "1":
        return PassPlan(request, False, one)
    first = _selection_request(live, extra, num_layers)

    def some_blocks(run: Any) -> list:  # as many blocks as the run keeps, apart: the most a choice can need
        ctx = run.method.selection_context(num_layers, run.layers)
        count = int(getattr(run.method.selector.options, "num_blocks", 1))
        picked: list = []
        for block in run.method.selector.candidates(ctx):
            if len(picked) < count and all(block.start > b.end or block.end < b.start for b in picked):
                picked.append(block)
        return picked

    second = _blocks_request(live, some_blocks)
    first_est = estimate(first, hidden=hidden, num_layers=num_layers, dtype_bytes=dtype_bytes,
                         sample_slots=slots_of(first))
    second_est = estimate(second, hidden=hidden, num_layers=num_layers, dtype_bytes=dtype_bytes,
                          sample_slots=slots_of(second))
    largest = max((first_est, second_est), key=lambda e: e.total_bytes)
    two_est = dataclasses.replace(largest, passes=2)
    two = passes == "2" or (one.total_bytes > TWO_PASS_AT and 2 * two_est.total_bytes < one.total_bytes)
    return PassPlan(first if two else request, two, one, two_est)


def second_request(stats: Any, live: list, num_layers: int) -> StatsRequest:
    """What the compensators need for the blocks each run selects from ``stats`` (the
    first pass's tables); selection runs again, identically, when the method is applied."""
    def chosen(run: Any) -> list:
        ctx = run.method.selection_context(num_layers, run.layers)
        return list(run.method.selector.select(stats, ctx).blocks)

    return _blocks_request(live, chosen)


def merge_passes(first: Any, second: Any) -> Any:
    """The second pass's statistics with the first pass's distance tables and time added."""
    second.angular = {**first.angular, **second.angular}
    second.token_cosine = {**first.token_cosine, **second.token_cosine}
    second.seconds += first.seconds
    return second
