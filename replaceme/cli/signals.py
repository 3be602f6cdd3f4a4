"""SIGTERM and SIGHUP end a run the way Ctrl-C does.

A scheduler's ``timeout``, Slurm's end of job, ``docker stop`` or a closed terminal
send SIGTERM or SIGHUP. While a command runs, these raise :class:`Terminated` (a
``KeyboardInterrupt``) in the main thread, so every ``finally`` and context manager
runs as for Ctrl-C: locks are released and temporaries removed; the CLI then
prints one line and exits with 128 + the signal's number. A second signal during
that cleanup is ignored (SIGKILL still ends the process). The previous handlers
are restored when the command ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

#: the signals handled like Ctrl-C (those that exist on this platform)
SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM or SIGHUP."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int, frame: object) -> None:
    for sig in SIGNALS:  # cleanup is under way: a second signal must not interrupt it
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


@contextlib.contextmanager
def terminating_like_ctrl_c() -> Iterator[None]:
    """Within this block, SIGTERM and SIGHUP raise :class:`Terminated`; the handlers
    that were installed before are put back afterwards (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in SIGNALS:
        previous[sig] = signal.getsignal(sig)
        if previous[sig] is signal.SIG_IGN:  # nohup: the user asked to ignore it
            continue
        signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def terminated_by(exc: BaseException | None) -> Terminated | None:
    """The :class:`Terminated` behind ``exc`` (click wraps interrupts in ``Abort``), else None."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, Terminated):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
