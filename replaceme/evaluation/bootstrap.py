"""Vectorised bootstrap standard errors (perplexity error bars), fast at lm-eval's 100,000 resamples.

- :func:`ratio_stderr`: the standard error of ``exp(Σ w·nll / Σ w·n)`` over units
  resampled with replacement (our perplexity: the units are the scored
  batches of windows, each with its summed NLL and token count; resampling whole
  batches keeps the tokens of a window together).
- :func:`bootstrap_stderr`: a drop-in for ``lm_eval.api.metrics.bootstrap_stderr``
  (used by :func:`lm_eval_bootstrap` while lm-eval computes task metrics): the
  same estimator (the sample standard deviation of the statistic over
  resamples) for lm-eval's ``perplexity``, ``mean``, ``nanmean`` and ``median``
  items, computed with numpy in chunks instead of lm-eval's Python loop over a
  process pool (which also prints); other statistics fall back to a seeded loop.

Resample counts are drawn per chunk so that memory stays near
:data:`CHUNK_ELEMENTS` whatever the number of resamples; 100,000 resamples of
5,000 items take a few seconds on one core.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

#: lm-eval's default number of bootstrap resamples
DEFAULT_ITERS = 100_000
#: resample indices drawn at once (int64: 8 bytes each)
CHUNK_ELEMENTS = 4_000_000
SEED = 1234


def _index_chunks(n: int, iters: int, seed: int) -> Iterator[np.ndarray]:
    """``[rows, n]`` index matrices of resamples with replacement, ``iters`` rows in all."""
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < iters:
        take = min(rows, iters - done)
        yield rng.integers(0, n, size=(take, n))
        done += take


def _resampled(values: np.ndarray, iters: int, seed: int, statistic: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.concatenate([statistic(values[idx]) for idx in _index_chunks(len(values), iters, seed)])


def ratio_stderr(nll_sums: Sequence[float], counts: Sequence[int], iters: int = DEFAULT_ITERS,
                 seed: int = SEED) -> float | None:
    """Bootstrap stderr of ``exp(Σ nll / Σ tokens)`` over units (None with fewer than two units or no resamples)."""
    sums, tokens = np.asarray(nll_sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if iters <= 0 or len(sums) < 2:
        return None
    stats = [np.exp(sums[idx].sum(axis=1) / tokens[idx].sum(axis=1)) for idx in _index_chunks(len(sums), iters, seed)]
    values = np.concatenate(stats)
    return float(values.std(ddof=1)) if len(values) > 1 else None


def _vectorised(f: Callable[..., Any]) -> Callable[[np.ndarray], np.ndarray] | None:
    """The row-wise numpy form of an lm-eval statistic, when it has one."""
    from lm_eval.api import metrics

    forms = {
        getattr(metrics, "perplexity", None): lambda m: np.exp(-m.mean(axis=1)),
        getattr(metrics, "mean", None): lambda m: m.mean(axis=1),
        getattr(metrics, "nanmean", None): lambda m: np.nanmean(m, axis=1),
        getattr(metrics, "median", None): lambda m: np.median(m, axis=1),
    }
    return forms.get(f)


def bootstrap_stderr(f: Callable[[Sequence[Any]], float], xs: Sequence[Any], iters: int) -> float:
    """lm-eval's bootstrap standard error of ``f(xs)``, vectorised where ``f`` allows it."""
    form = _vectorised(f)
    if form is not None:
        values = np.asarray(xs, dtype=np.float64)
        if values.ndim == 1 and len(values):
            stats = _resampled(values, iters, SEED, form)
            return float(stats.std(ddof=1)) if len(stats) > 1 else math.nan
    rng = np.random.default_rng(SEED)
    items = list(xs)
    stats = np.array([f([items[i] for i in rng.integers(0, len(items), len(items))]) for _ in range(iters)])
    return float(stats.std(ddof=1)) if len(stats) > 1 else math.nan


@contextlib.contextmanager
def lm_eval_bootstrap() -> Iterator[None]:
    """While lm-eval computes metrics, its bootstrap is :func:`bootstrap_stderr` (restored after)."""
    from lm_eval.api import metrics

    original = metrics.bootstrap_stderr
    metrics.bootstrap_stderr = bootstrap_stderr
    try:
        yield
    finally:
        metrics.bootstrap_stderr = original
