"""User-facing errors.

Every failure caused by the user's input (a bad option, a missing file, an
unknown method, ...) is raised as :class:`ReplacemeError`. The CLI turns it into
one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ReplacemeError(Exception):
    """An error the user can fix; its message is shown as a single line."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> ReplacemeError:
    """Build the error for an unknown name among ``choices``."""
    choices = sorted(choices)
    return ReplacemeError(
        f"unknown {kind} '{name}'{did_you_mean(name, choices)}; "
        f"choose from: {', '.join(choices) or '(none)'}"
    )
