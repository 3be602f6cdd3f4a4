"""One progress display for lm-eval's work instead of its tqdm bars.

lm-eval draws a tqdm bar for tokenizing and another for running each kind of
request, passing ``disable=False`` explicitly (so ``TQDM_DISABLE`` cannot turn
them off), and with stderr in a log file every redraw is a new line. Unless
``-vv`` asked for third-party output (see :func:`replaceme.console.setup_logging`),
:func:`one_bar` runs the model's request methods with ``disable_tqdm=True`` and
shows one bar per request kind: its total is the number of requests, advanced
by the rows of each forward pass, and it ends complete.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

#: lm-eval's request methods (each takes ``disable_tqdm``)
REQUEST_METHODS = {"loglikelihood": "log-likelihoods", "loglikelihood_rolling": "rolling log-likelihoods",
                   "generate_until": "generations"}


@contextlib.contextmanager
def one_bar(lm: Any, tasks: str) -> Iterator[None]:
    """While lm-eval evaluates with ``lm``, show our own bars instead of its tqdm bars."""
    if os.environ.get("TQDM_DISABLE") != "1":  # -vv: lm-eval's own bars
        yield
        return
    from replaceme.console import LossBar

    current: list[Any] = []
    model_call = lm._model_call

    def counted_call(inps: Any, *args: Any, **kwargs: Any) -> Any:
        out = model_call(inps, *args, **kwargs)
        if current:
            current[-1].update(int(inps.shape[0]))
        return out

    def wrap(name: str, label: str) -> Any:
        method = getattr(lm, name)

        def run(requests: list[Any], disable_tqdm: bool = False) -> Any:
            with LossBar(f"lm-eval {tasks}: {label}", total=max(1, len(requests))) as bar:
                current.append(bar)
                try:
                    return method(requests, disable_tqdm=True)
                finally:
                    current.pop()
        return run

    saved = {name: lm.__dict__.get(name) for name in (*REQUEST_METHODS, "_model_call")}
    for name, label in REQUEST_METHODS.items():
        setattr(lm, name, wrap(name, label))
    lm._model_call = counted_call
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                lm.__dict__.pop(name, None)
            else:
                setattr(lm, name, value)
