"""User-facing errors.

Every failure caused by the user's input (a bad option, a missing file, an
unknown method, ...) is raised as :class:`ReplacemeError`. The CLI turns it into
one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable
from typing import Any

#: the longest message an error shows (a safety net: values in it are already :func:`shown`)
MAX_MESSAGE = 2000


class ReplacemeError(Exception):
    """An error the user can fix; its message is shown as a single line.

    Line breaks in the message (a user's value can hold them) are written as ``\\n``;
    a message longer than :data:`MAX_MESSAGE` characters is cut in the middle.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        text = str(message).replace("\r", "\\r").replace("\n", "\\n")
        if len(text) > MAX_MESSAGE:
            half = MAX_MESSAGE // 2
            text = f"{text[:half]} ... {text[-half:]}"
        super().__init__(text, *args)


class _Shown(reprlib.Repr):
    """``repr`` that stops early: bounded in length, depth and items, whatever the value."""

    def __init__(self, limit: int):
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = limit
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 4
        self.maxlevel = 3

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 200:  # a huge integer: never convert it all to text
            return f"<an integer of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return super().repr_int(x, level)


def shown(value: Any, limit: int = 60) -> str:
    """``value`` as an error message shows it: a ``repr`` cut to about ``limit``
    characters, computed in bounded time and memory (a huge integer, a deep or
    self-expanding structure from a YAML alias bomb, a megabyte string)."""
    try:
        text = _Shown(limit).repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails: say what it is
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit + 5 else text[:limit] + "..."


def shorten(value: Any, limit: int = 200) -> str:
    """``value`` as plain text (a string without quotes: a path, a name) cut to about
    ``limit`` characters, saying how much was left out; any other value as :func:`shown`."""
    if not isinstance(value, str):
        return shown(value, limit)
    if len(value) <= limit:
        return value
    keep = max(limit - 30, 10)
    return f"{value[:keep]}... ({len(value) - keep} more characters)"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    if len(word) > 200:  # no close match is that long; difflib would take long to say so
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> ReplacemeError:
    """Build the error for an unknown name among ``choices``."""
    choices = sorted(choices)
    return ReplacemeError(
        f"unknown {kind} {shown(name)}{did_you_mean(name, choices)}; "
        f"choose from: {', '.join(choices) or '(none)'}"
    )


#: errno values that mean a write did not fit: a full disk, a file-size limit (``ulimit -f``), a quota
NO_SPACE_ERRNOS = {28, 27, 122}  # ENOSPC, EFBIG, EDQUOT (Linux)
#: how libraries that hide the errno (safetensors, torch.save) word the same failures
NO_SPACE_TEXT = ("no space left on device", "file too large", "disk quota exceeded", "storagefull",
                 "filetoolarge", "file write failed")


def no_space(exc: BaseException, chain: bool = True) -> str | None:
    """The reason when ``exc`` (or, with ``chain``, what caused it) is a full disk, a size
    limit or a quota, else None."""
    import errno
    import os

    codes = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
    seen = 0
    link: BaseException | None = exc
    while link is not None and seen < 20:
        if isinstance(link, OSError) and link.errno in codes:
            return link.strerror or os.strerror(link.errno)
        text = str(link).lower()
        marker = next((m for m in NO_SPACE_TEXT if m in text), None)
        if marker is not None and not isinstance(link, ReplacemeError):
            return {"storagefull": "no space left on device", "filetoolarge": "file too large"}.get(marker, marker)
        link = (link.__cause__ or link.__context__) if chain else None
        seen += 1
    return None


#: exit status of an error the user can fix (and of click's usage errors)
USER_ERROR = 2
#: exit status of an unexpected error (a bug, or a failure we do not know)
INTERNAL_ERROR = 1


def first_line(error: BaseException | str) -> str:
    """The first line of an error's message, stripped, for one-line reports: an
    exception with an empty message gives its class name, an empty string ``""``."""
    text = str(error).strip()
    if text:
        return text.splitlines()[0].strip()
    return type(error).__name__ if isinstance(error, BaseException) else ""


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 20:
        seen.append(exc)
        exc = exc.__cause__  # type: ignore[assignment]  # explicit causes only: a context may be incidental
    return seen


def _known(exc: BaseException) -> str | None:
    """A one-line message for a library exception whose cause is the user's input, else None."""
    import json

    name = type(exc).__name__
    module = type(exc).__module__ or ""
    text = first_line(str(exc))
    if isinstance(exc, ReplacemeError):
        return text or name
    if not isinstance(exc, ReplacemeError) and (reason := no_space(exc, chain=False)) is not None:
        where = f" {exc.filename}" if isinstance(exc, OSError) and exc.filename is not None else ""
        return (f"no space left on the device while writing{where} ({reason}); free some space, raise the limit, "
                "or write elsewhere")
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError":
        return f"out of memory ({text or name}); try a smaller --batch-size or --max-length"
    if isinstance(exc, OSError):
        what = exc.filename if exc.filename is not None else None
        reason = exc.strerror or text or name
        if what is not None:
            other = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
            return f"{shorten(str(what))}{shorten(other)}: {reason}"
        if exc.errno is not None:
            return f"input/output error: {reason}"
        return None
    if isinstance(exc, UnicodeDecodeError):
        return f"cannot decode text as {exc.encoding} (byte {exc.start}): the file is not text in that encoding"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    if module.startswith("yaml"):
        return f"invalid YAML: {text}"
    if name == "SafetensorError" or module.startswith("safetensors"):
        return f"corrupt or unreadable safetensors file: {text}"
    if module.startswith("pyarrow") or name in ("ArrowInvalid", "ArrowIOError"):
        return f"corrupt or unreadable data file: {text}"
    if name == "RecursionError":
        return "input nested too deeply"
    if isinstance(exc, RuntimeError) and "Error(s) in loading state_dict" in str(exc):
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line or "Missing key" in line
                       or "Unexpected key" in line), text)
        return f"the checkpoint does not match the model's config: {detail[:300]}"
    if isinstance(exc, ValueError) and "null byte" in text:
        return "a path or name contains a NUL character"
    return None


def explain(exc: BaseException) -> tuple[str, int]:
    """One line describing ``exc`` for the user, and the exit status.

    Our own errors and library errors caused by the user's files (an OSError
    naming a file, bad JSON/YAML, a corrupt safetensors or parquet file, ...)
    exit 2; anything else is unexpected and exits 1, with a hint to rerun with
    ``--debug`` and report it.
    """
    for link in _chain(exc):
        message = _known(link)
        if message is not None:
            return shorten(message.replace("\n", " "), MAX_MESSAGE), USER_ERROR
    text = shorten(first_line(str(exc)), MAX_MESSAGE)
    return (f"unexpected {type(exc).__name__}" + (f": {text}" if text else "")
            + " (rerun with --debug to see the traceback, and please report it)"), INTERNAL_ERROR
