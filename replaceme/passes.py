"""The plan of a run's statistics: one pass or two, the sample in RAM or on disk, and
its size, chosen to fit a memory and a disk budget (``--memory-budget``, ``--disk-budget``).

One pass gathers, for every run of a ``prune``/``compare``, what its selector and its
compensator need for *every candidate block* (ReplaceMe LSTSQ at ``-n N``: float64
``XᵀX``/``XᵀY`` for all ``L − N`` starts; the cosine and LLM-Streamline samples at
every candidate boundary). When every selector chooses from the distance tables
alone (``Selector.selects_from_tables``), two passes need much less, as the ReplaceMe
reference does it: a first pass computes the tables, each run selects its blocks, and
a second pass gathers what the compensators need for the chosen blocks only
(:mod:`replaceme.stats.estimate` gives both sizes). The cost is a second forward pass
over the calibration set (with ``--offload``: reading the checkpoint twice).

:func:`plan_statistics` decides, in this order (pure arithmetic on the estimates):

1. **Passes**: ``--stats-passes auto`` takes two when the one-pass statistics (Gram
   sums + sample) exceed the memory budget and two passes hold less (not when a
   selector scores plans); ``1`` and ``2`` force the choice. Under ``torchrun`` both
   passes are shared by the ranks: every rank takes the first pass's tables, rank 0
   chooses the second request and every rank runs its shard of it.
2. **Where the sample lives**: on disk (memory-mapped files of a
   :class:`~replaceme.stats.spill.Spill` in ``--spill-dir`` or the system temporary
   directory) when ``--spill-dir``/``--offload`` asks for it or when it does not fit
   the memory budget beside the Gram sums; else in RAM.
3. **Its size**: a spilled sample larger than the disk budget is drawn smaller (whole
   batches: the request's ``sample_tokens`` is capped), with a warning naming both budgets.
4. **Refusal**: when even the smallest plan (two passes if allowed, the sample on
   disk, one batch of it) does not fit, one line before the calibration pass.

What the budget leaves beside the Gram sums and the in-RAM sample is the working memory
of the compensators (:attr:`StatsPlan.work_bytes`; the cosine fit sizes its token
chunks from it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from replaceme.errors import ReplacemeError
from replaceme.stats.estimate import StatsEstimate, estimate, format_size
from replaceme.stats.request import StatsRequest

log = logging.getLogger(__name__)

PASS_CHOICES = ("auto", "1", "2")


@dataclass
class StatsPlan:
    """How the statistics of a run are gathered.

    Attributes:
        first: the request of the first (or only) pass (with the sample cap applied).
        two: whether a second pass follows selection.
        one_pass, two_passes: the estimates of either way, uncapped (``two_passes`` None
            when two passes are not possible).
        chosen: the estimate of the plan taken (cap applied).
        spill: whether the activation sample goes to disk.
        sample_cap: the capped ``sample_tokens`` (None: not capped).
        memory_budget, disk_budget: the budgets in bytes.
    """

    first: StatsRequest
    two: bool
    one_pass: StatsEstimate
    chosen: StatsEstimate
    memory_budget: int
    disk_budget: int
    two_passes: StatsEstimate | None = None
    spill: bool = False
    sample_cap: int | None = None

    @property
    def ram_bytes(self) -> int:
        """What the statistics hold in RAM: Gram sums, tables and the sample unless spilled."""
        c = self.chosen
        return c.gram_bytes + c.table_bytes + (0 if self.spill else c.sample_bytes)

    @property
    def disk_bytes(self) -> int:
        return self.chosen.sample_bytes if self.spill else 0

    @property
    def work_bytes(self) -> int:
        """What the memory budget leaves to the compensators' working memory."""
        return max(0, self.memory_budget - self.ram_bytes)

    def capped(self, request: StatsRequest) -> StatsRequest:
        """``request`` with its sample drawn within the cap (the second pass's request)."""
        if self.sample_cap is None or request.sample_tokens <= self.sample_cap:
            return request
        return dataclasses.replace(request, sample_tokens=self.sample_cap)

    def describe(self) -> str:
        """One line: passes, memory and disk against the budgets."""
        c = self.chosen
        passes = f"{2 if self.two else 1} pass{'es' if self.two else ''}"
        sample = (f"; sample {format_size(c.sample_bytes)} on disk" if self.spill
                  else f" + sample {format_size(c.sample_bytes)}")
        return (f"statistics: {passes}, memory {format_size(self.ram_bytes)} (Gram {format_size(c.gram_bytes)}"
                f"{sample}) of {format_size(self.memory_budget)} budget, disk {format_size(self.disk_bytes)} "
                f"of {format_size(self.disk_budget)}")

    def to_dict(self) -> dict[str, Any]:
        return {"memory_budget": self.memory_budget, "disk_budget": self.disk_budget, "ram_bytes": self.ram_bytes,
                "disk_bytes": self.disk_bytes, "work_bytes": self.work_bytes, "passes": 2 if self.two else 1,
                "sample_on_disk": self.spill, "sample_cap_tokens": self.sample_cap}


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


def check_two_passes(selectors: list[Any]) -> None:
    """``--stats-passes 2`` needs at least one method, and selectors that choose from distance
    tables alone (checked before the model loads: :mod:`replaceme.preflight`)."""
    if not selectors or not all(s.selects_from_tables for s in selectors):
        raise ReplacemeError("--stats-passes 2 needs selectors that choose from distance tables alone; "
                             "a selector that scores plans needs every candidate's statistics in one pass")


def plan_statistics(live: list, extra: StatsRequest | None, request: StatsRequest, *, num_layers: int, hidden: int,
                    dtype_bytes: int, slots_of: Callable[[StatsRequest], int], memory_budget: int, disk_budget: int,
                    passes: str = "auto", spill: bool = False) -> StatsPlan:
    """Plan the statistics of ``request`` (the union of ``live`` runs' requests and ``extra``)
    within ``memory_budget`` and ``disk_budget`` bytes (steps in the module docstring).

    Args:
        slots_of: token slots (``Σ B·T``) the sample of a request keeps.
        spill: the sample goes to disk whatever its size (``--spill-dir``, ``--offload``).
    """
    if passes not in PASS_CHOICES:
        raise ReplacemeError(f"--stats-passes must be one of {', '.join(PASS_CHOICES)} (got {passes!r})")

    def est(req: StatsRequest, count: int = 1) -> StatsEstimate:
        return estimate(req, hidden=hidden, num_layers=num_layers, dtype_bytes=dtype_bytes, sample_slots=slots_of(req),
                        passes=count)

    one = est(request)
    possible = bool(live) and all(run.method.selector.selects_from_tables for run, _ in live)
    if passes == "2":
        check_two_passes([run.method.selector for run, _ in live])
    first, second = request, None
    two_est = None
    if possible:
        first, second = _selection_request(live, extra, num_layers), _blocks_request(live, _some_blocks(num_layers))
        two_est = _both(est(first, 2), est(second, 2))
    if passes == "auto":
        two = two_est is not None and one.total_bytes > memory_budget and two_est.total_bytes < one.total_bytes
    else:
        two = passes == "2"
    requests = [first, second] if two else [request]
    chosen = two_est if two else one
    held = chosen.gram_bytes + chosen.table_bytes
    if held > memory_budget:
        raise ReplacemeError(_refusal(chosen, one, two_est, memory_budget))
    spill = spill or held + chosen.sample_bytes > memory_budget
    cap = None
    if spill and chosen.sample_bytes > disk_budget:

        def drawn(tokens: int) -> StatsEstimate:  # the plan's estimate with every sample capped at ``tokens``
            return _both(*(est(dataclasses.replace(r, sample_tokens=min(r.sample_tokens, tokens)), len(requests))
                           for r in requests))

        cap = _largest(lambda tokens: drawn(tokens).sample_bytes <= disk_budget,
                       max(r.sample_tokens for r in requests))
        chosen = drawn(cap)
        if chosen.sample_bytes > disk_budget:
            raise ReplacemeError(f"the activation sample needs at least {format_size(chosen.sample_bytes)} on disk "
                                 f"(one batch and the held-out batches) but --disk-budget is {format_size(disk_budget)}; "
                                 "raise --disk-budget, lower --batch-size or --max-length, or use --holdout-fraction 0")
    plan = StatsPlan(requests[0], two, one, chosen, memory_budget, disk_budget, two_est, spill, cap)
    plan.first = plan.capped(plan.first)
    return plan


def _both(first: StatsEstimate, second: StatsEstimate | None = None) -> StatsEstimate:
    """What two passes hold at their peak: the first pass's statistics are kept while the
    second runs (bytes and counts add; token slots are the larger)."""
    if second is None:
        return first
    added = {f: getattr(first, f) + getattr(second, f) for f in
             ("gram_bytes", "sample_bytes", "table_bytes", "gram_starts", "gram_blocks", "sample_tensors")}
    return dataclasses.replace(first, **added, sample_slots=max(first.sample_slots, second.sample_slots))


def _some_blocks(num_layers: int) -> Callable[[Any], list]:
    """As many blocks as a run keeps, apart: the most a choice can need (before selection)."""
    def blocks(run: Any) -> list:
        ctx = run.method.selection_context(num_layers, run.layers)
        count = int(getattr(run.method.selector.options, "num_blocks", 1))
        picked: list = []
        for block in run.method.selector.candidates(ctx):
            if len(picked) < count and all(block.start > b.end or block.end < b.start for b in picked):
                picked.append(block)
        return picked

    return blocks


def _largest(fits: Callable[[int], bool], most: int) -> int:
    """The largest ``t`` in ``1..most`` with ``fits(t)`` (``fits`` turns false as ``t`` grows;
    1 when none fits: the smallest sample, one batch)."""
    lo, hi = 1, max(1, most)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _refusal(chosen: StatsEstimate, one: StatsEstimate, two: StatsEstimate | None, budget: int) -> str:
    """The one line refusing a run whose Gram sums alone exceed the memory budget."""
    hint = "raise --memory-budget"
    if two is not None and chosen is one and two.gram_bytes + two.table_bytes <= budget:
        hint = f"--stats-passes 2 holds {format_size(two.gram_bytes)}"
    elif two is None:
        hint += " (two passes need a selector that chooses from the distance tables)"
    return (f"the statistics need {format_size(chosen.gram_bytes + chosen.table_bytes)} in memory even with the "
            f"sample on disk (float64 Gram sums of {chosen.gram_blocks} block(s)) but --memory-budget is "
            f"{format_size(budget)}: {hint}")


def second_request(stats: Any, live: list, num_layers: int) -> StatsRequest:
    """What the compensators need for the blocks each run selects from ``stats`` (the
    first pass's tables); selection runs again, identically, when the method is applied."""
    def chosen(run: Any) -> list:
        ctx = run.method.selection_context(num_layers, run.layers)
        return list(run.method.selector.select(stats, ctx).blocks)

    return _blocks_request(live, chosen)


def remaining_request(stats: Any, runs: list, num_layers: int) -> StatsRequest | None:
    """What ``runs`` (objects with ``method`` and ``layers``) will still read of ``stats``: a run
    whose selector chooses from the distance tables needs its compensator's statistics of
    the blocks it selects (selection is deterministic); any other run its whole request,
    every candidate's. None when a run cannot say (then nothing may be dropped)."""
    request = StatsRequest()
    for run in runs:
        try:
            if run.method.selector.selects_from_tables:
                ctx = run.method.selection_context(num_layers, run.layers)
                needed = run.method.compensator.stats_request(list(run.method.selector.select(stats, ctx).blocks))
            else:
                needed = run.method.stats_request(num_layers, run.layers)
        except Exception:  # noqa: BLE001  (the run fails, with its own message, when it is applied)
            return None
        request = request.union(needed)
    return request


def merge_passes(first: Any, second: Any) -> Any:
    """The second pass's statistics with the first pass's distance tables and time added."""
    second.angular = {**first.angular, **second.angular}
    second.token_cosine = {**first.token_cosine, **second.token_cosine}
    second.seconds += first.seconds
    return second



def check_fits_before_loading(runs: list[tuple[Any, int, StatsRequest]], extra: StatsRequest | None, *,
                              num_layers: int, hidden: int, weight_bytes: int, memory: Any) -> None:
    """Refuse, before the model loads, a run whose Gram sums cannot fit ``--memory-budget``
    even in the smallest plan: :func:`plan_statistics` on the model's shape with the sample
    left out (its size needs the tokenised calibration set; the full plan follows then).

    Args:
        runs: ``(resolved method, layers, its StatsRequest)`` of every run that can run.
        weight_bytes: with ``--memory-budget auto``, the model's weight bytes at the largest
            dtype it may load in, so that this check is never stricter than the full plan.
        memory: the :class:`~replaceme.settings.MemorySettings`.
    """
    from types import SimpleNamespace

    from replaceme.offload.budget import parse_size
    from replaceme.resources import auto_memory_budget

    live = [(SimpleNamespace(method=method, layers=n), request) for method, n, request in runs]
    request = extra or StatsRequest()
    for _, req in live:
        request = request.union(req)
    if request.is_empty:
        return
    budget = parse_size(memory.memory_budget, "--memory-budget")
    plan_statistics(live, extra, request, num_layers=num_layers, hidden=hidden, dtype_bytes=4, slots_of=lambda _: 0,
                    memory_budget=auto_memory_budget(weight_bytes) if budget is None else budget,
                    disk_budget=1 << 62, passes=str(memory.stats_passes))
