"""Vectorised bootstrap standard errors agree with lm-eval's own bootstrap and with closed forms."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from replaceme.evaluation.bootstrap import bootstrap_stderr, lm_eval_bootstrap, ratio_stderr


def test_perplexity_stderr_matches_lm_evals_own_bootstrap(monkeypatch):
    from lm_eval.api import metrics

    monkeypatch.setenv("DISABLE_MULTIPROC", "1")  # lm-eval's single-process loop (its pool would fork here)
    items = np.random.default_rng(0).normal(-2.0, 0.8, 300).tolist()
    theirs = metrics.bootstrap_stderr(metrics.perplexity, items, iters=3000)
    ours = bootstrap_stderr(metrics.perplexity, items, iters=3000)
    assert ours == pytest.approx(theirs, rel=0.08)  # two independent Monte-Carlo estimates of the same quantity
    # the delta method: sd(exp(-mean)) ≈ exp(-mean) · sd(x) / sqrt(n)
    x = np.array(items)
    assert ours == pytest.approx(math.exp(-x.mean()) * x.std() / math.sqrt(len(x)), rel=0.08)


def test_mean_stderr_is_the_closed_form():
    from lm_eval.api import metrics

    x = np.random.default_rng(1).normal(0.0, 2.0, 1000)
    ours = bootstrap_stderr(metrics.mean, x.tolist(), iters=20_000)
    assert ours == pytest.approx(x.std() / math.sqrt(len(x)), rel=0.03)  # the bootstrap's plug-in variance


def test_batch_perplexity_stderr_by_the_delta_method():
    rng = np.random.default_rng(2)
    nll = rng.normal(2.0, 0.3, 400)  # mean NLL per token of each batch
    counts = np.full(400, 256)
    stderr = ratio_stderr(nll * counts, counts, iters=20_000)
    assert stderr == pytest.approx(math.exp(nll.mean()) * nll.std() / math.sqrt(len(nll)), rel=0.05)
    assert ratio_stderr([1.0], [3], iters=100) is None and ratio_stderr(nll, counts, iters=0) is None


def test_lm_evals_default_resamples_stay_fast_and_lm_eval_is_restored():
    from lm_eval.api import metrics

    items = np.random.default_rng(3).normal(-2.0, 1.0, 1000).tolist()
    before = metrics.bootstrap_stderr
    started = time.perf_counter()
    with lm_eval_bootstrap():
        assert metrics.bootstrap_stderr is bootstrap_stderr
        fn = metrics.stderr_for_metric(metrics.perplexity, bootstrap_iters=100_000)
        value = fn(items)
    assert time.perf_counter() - started < 20  # lm-eval's own loop takes minutes for this
    assert value > 0 and metrics.bootstrap_stderr is before
