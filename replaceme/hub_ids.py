"""Hugging Face Hub repository ids of source models (for a model card's ``base_model``).

A pruned model's card names its ``base_model`` only as a Hub repository id,
which the Hub checks (``huggingface_hub.utils.validate_repo_id``). The id is:

- the one given with ``--base-model ID`` (checked; for a local copy of a Hub model);
- else the source itself when it was given as a Hub id (``org/name``, not an
  existing local path);
- else ``org/name`` when the source is a snapshot folder of the Hub's cache
  (``.../models--org--name/snapshots/<revision>``);
- else none: a local model that did not come from the Hub has no ``base_model``
  (its path is recorded in ``pruning.json`` as ``source_model``).
"""

from __future__ import annotations

import re
from pathlib import Path

from replaceme.errors import ReplacemeError

_CACHE_FOLDER = re.compile(r"^models--(?P<id>.+)$")


def is_repo_id(text: str) -> bool:
    """Whether ``text`` passes the Hub's own repository-id validation."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def check_repo_id(text: str, option: str = "--base-model") -> str:
    """``text`` if it is a valid Hub repository id, else a one-line error naming ``option``."""
    if not is_repo_id(text):
        raise ReplacemeError(f"{option} {text!r} is not a Hugging Face Hub repository id (like 'org/model-name')")
    return text


def cache_repo_id(path: Path) -> str | None:
    """``org/name`` of a snapshot folder in the Hub's cache (``models--org--name/snapshots/REV``), else None."""
    parts = path.parts
    for i in range(len(parts) - 2):
        match = _CACHE_FOLDER.match(parts[i])
        if match and parts[i + 1] == "snapshots":
            repo = match.group("id").replace("--", "/")
            return repo if is_repo_id(repo) else None
    return None


def base_model_id(source: str | None, given: str | None = None) -> str | None:
    """The Hub id a model card names as ``base_model`` (see the module's rules), or None."""
    if given:
        return check_repo_id(given)
    if not source:
        return None
    path = Path(source).expanduser()
    if path.exists():
        return cache_repo_id(path.resolve())
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        return None
    return source if is_repo_id(source) else None
