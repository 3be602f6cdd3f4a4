"""Wall time and peak memory of a stage (process RSS, and CUDA when used)."""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Usage:
    """What one stage cost: seconds, peak resident memory (bytes), peak CUDA memory (bytes or None)."""

    seconds: float = 0.0
    peak_rss: int = 0
    peak_cuda: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 4), "peak_rss_mb": round(self.peak_rss / 2**20, 1),
                "peak_cuda_mb": None if self.peak_cuda is None else round(self.peak_cuda / 2**20, 1)}


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


#: ``--memory-budget auto``: at least this many bytes for the statistics (256 MiB)
AUTO_BUDGET_FLOOR = 256 * 2**20
#: ``--memory-budget auto``: this fraction of the model's weight bytes (if above the floor)
AUTO_BUDGET_OF_WEIGHTS = 0.25
#: ``--memory-budget auto``: never more than this fraction of the memory available at start
AUTO_BUDGET_OF_AVAILABLE = 0.5


def available_memory() -> int:
    """Bytes of RAM available to new allocations now (``psutil``: free + reclaimable cache)."""
    import psutil

    return int(psutil.virtual_memory().available)


def auto_memory_budget(weight_bytes: int, available: int | None = None) -> int:
    """``--memory-budget auto``: ``max(256 MiB, weight_bytes / 4)``, capped at half the RAM
    ``available`` (default: :func:`available_memory`) so that a small machine is not promised
    more than it has. A quarter of the weights keeps the statistics well under the model
    itself, which the whole-model commands hold anyway."""
    wanted = max(AUTO_BUDGET_FLOOR, int(weight_bytes * AUTO_BUDGET_OF_WEIGHTS))
    free = available_memory() if available is None else available
    return max(1, min(wanted, int(free * AUTO_BUDGET_OF_AVAILABLE)))


class Meter:
    """Context manager measuring a stage; peak RSS is sampled every ``interval`` seconds.

    Example::

        with Meter() as m:
            work()
        m.usage.seconds, m.usage.peak_rss
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.usage = Usage()
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.usage.peak_rss = max(self.usage.peak_rss, _rss())

    def __enter__(self) -> Meter:
        self._cuda = _cuda_in_use()
        if self._cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self.usage.peak_rss = _rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.usage.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.usage.peak_rss = max(self.usage.peak_rss, _rss())
        if self._cuda:
            import torch

            self.usage.peak_cuda = int(torch.cuda.max_memory_allocated())


def _cuda_in_use() -> bool:
    import sys

    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


@functools.cache
def _libc() -> Any:
    """The C library, looked up once: ``ctypes.util.find_library`` forks ``ldconfig -p``
    on every call, which ``--offload`` did after every layer."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


#: mallopt parameter number of M_MMAP_THRESHOLD, and glibc's value at process start
_M_MMAP_THRESHOLD = -3
GLIBC_START_MMAP_THRESHOLD = 128 * 1024
_large_allocation_holders = 0


def return_large_allocations(threshold: int = 1 << 20) -> bool:
    """Make glibc serve allocations of ``threshold`` bytes or more with their own
    memory maps, which go back to the system when freed. Returns whether it did
    (False outside glibc).

    By default glibc raises this threshold dynamically (up to 32 MiB) after large
    frees, so the tensors of a layer loaded and freed one after another land on the
    heap and stay resident as fragments: ``--offload`` then grew by a layer's size
    every few layers. Process-wide: prefer :func:`hold_large_allocations`, which
    undoes it.
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))  # setting it also turns the dynamic adjustment off
    return True


def hold_large_allocations(owner: Any, threshold: int = 1 << 20) -> None:
    """:func:`return_large_allocations` for as long as ``owner`` lives (a model, loaded
    whole or offloaded): when the last such owner is collected, the threshold goes back to
    glibc's value at process start (128 KiB). glibc has no call that turns its
    dynamic adjustment back on, so after that the process keeps the start value
    (allocations of 128 KiB or more get their own maps), not a raised one."""
    import weakref

    global _large_allocation_holders
    if _large_allocation_holders == 0 and not return_large_allocations(threshold):
        return
    _large_allocation_holders += 1
    weakref.finalize(owner, _release_large_allocations)


def _release_large_allocations() -> None:
    global _large_allocation_holders
    _large_allocation_holders -= 1
    if _large_allocation_holders == 0:
        return_large_allocations(GLIBC_START_MMAP_THRESHOLD)


def release_free_memory() -> None:
    """Hand memory that is free in the heap back to the system (glibc ``malloc_trim``); no-op elsewhere."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
