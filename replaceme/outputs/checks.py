"""Before any work: may this output be written? Inputs are never outputs, and an
existing output is replaced only when replaceme wrote it."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError
from replaceme.outputs.ownership import FILES_KIND, Ownership, read_ownership
from replaceme.outputs.runs import TAG, clean_stale_runs, restore_orphan


def resolve(path: str | os.PathLike[str]) -> Path:
    """Absolute path with ``~``, symlinks and ``..`` resolved (the path need not exist)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _without_slice(spec: str) -> str:
    """``file.txt[:100]`` (a record slice of a text source) -> ``file.txt``."""
    if spec.endswith("]") and "[" in spec:
        return spec[: spec.rindex("[")]
    return spec


#: what a model id on the Hugging Face hub looks like (``name`` or ``org/name``)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_cache_folder(name: str) -> Path | None:
    """The local folder of the hub model ``name`` in the Hugging Face cache (every
    snapshot, revision and blob of it: ``models--org--name``), when it is there; else None."""
    if not _HUB_ID.match(name) or os.path.lexists(os.path.expanduser(name)):
        return None
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=name, repo_type="model")
    except Exception:  # noqa: BLE001 - an unusable cache setting or an invalid id: nothing cached to protect
        return None
    return resolve(folder) if folder.is_dir() else None


def local_inputs(*paths: Any) -> list[Path]:
    """The inputs among ``paths`` that exist on this machine, resolved; a hub id is
    its folder in the Hugging Face cache when cached (see :func:`hub_cache_folder`).

    Text sources may carry a record slice (``file.txt[:100]``); it is removed.
    ``None`` and names found nowhere are skipped.
    """
    out = []
    for p in paths:
        if p is None:
            continue
        for candidate in (str(p), _without_slice(str(p))):
            if candidate and os.path.lexists(os.path.expanduser(candidate)):
                out.append(resolve(candidate))
                break
        else:
            cached = hub_cache_folder(str(p))
            if cached is not None:
                out.append(cached)
    return out


def _relation(target: Path, source: Path) -> str | None:
    if target == source:
        return "is"
    if target in source.parents:
        return "contains"
    if source in target.parents:
        return "is inside"
    return None


def check_not_input(target: str | os.PathLike[str], inputs: Iterable[Any], *, option: str = "--output") -> Path:
    """Refuse ``target`` when it is, contains, or lies inside one of ``inputs``."""
    resolved = resolve(target)
    for source in local_inputs(*inputs):
        relation = _relation(resolved, source)
        if relation:
            raise ReplacemeError(f"{option} {target} {relation} the input {source}; replaceme never writes over, "
                                 f"above or into its inputs (choose another {option})")
    return resolved


def check_work_dirs(inputs: Iterable[Any], *, spill_dir: Any = None, output: Any = None,
                    cache: bool = True) -> None:
    """Refuse places a run writes temporaries or caches into that are an input or lie
    inside one (or inside ``output``, which must appear whole at the end): ``--spill-dir``
    (else the system's temporary folder, ``$TMPDIR``) and, with ``cache``, the
    statistics cache. A folder that merely *contains* an input is fine: the run writes
    a new folder of its own there. Once they pass, what runs gone from this host left
    in them (run directories, interrupted cache writes) is removed
    (:func:`~replaceme.outputs.runs.clean_stale_runs`), whether or not this run uses them."""
    import tempfile

    from replaceme.cache_location import cache_dir

    places = [(spill_dir, "--spill-dir") if spill_dir is not None
              else (tempfile.gettempdir(), "the temporary folder ($TMPDIR)")]
    if cache:
        places.append((cache_dir("stats"), "the statistics cache ($REPLACEME_CACHE)"))
    sources = local_inputs(*inputs)
    if output is not None:
        sources.append(resolve(output))
    for place, what in places:
        if not str(place).strip():
            raise ReplacemeError(f"{what} is empty")
        resolved = resolve(place)
        for source in sources:
            relation = _relation(resolved, source)
            if relation in ("is", "is inside"):
                name = "the output" if output is not None and source == resolve(output) else "the input"
                raise ReplacemeError(f"{what} {place} {relation} {name} {source}; replaceme never writes temporaries "
                                     f"or caches into its inputs or outputs (choose another place)")
    for place, _what in places:
        folder = Path(os.path.expanduser(os.fspath(place)))
        if folder.is_dir():
            clean_stale_runs(folder)


def _check_parent(resolved: Path, shown: Any, option: str) -> None:
    """The nearest existing folder above ``resolved`` must be a writable directory."""
    for ancestor in resolved.parents:
        if os.path.lexists(ancestor):
            if not ancestor.is_dir():
                raise ReplacemeError(f"cannot create {option} {shown}: {ancestor} is not a directory")
            probe = ancestor / f".{TAG}-probe-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                probe.mkdir()
                probe.rmdir()
            except OSError as exc:
                raise ReplacemeError(f"cannot write {option} {shown}: {ancestor} is not writable "
                                     f"({exc.strerror or exc})") from None
            return


@dataclass
class OutputStatus:
    """What :func:`check_output` found: the resolved path and what is there now."""

    path: Path
    exists: bool
    empty: bool = False
    ownership: Ownership | None = None


def check_output(
    target: str | os.PathLike[str],
    *,
    kind: str = "dir",
    inputs: Iterable[Any] = (),
    overwrite: bool = False,
    allow_existing: bool = False,
    option: str = "--output",
    suffixes: tuple[str, ...] = (),
    owner_kind: str | None = None,
) -> OutputStatus:
    """Decide whether ``target`` may be created (or replaced); raise a one-line error if not.

    Nothing is created. Checked, in order: the path is not empty text, not a
    symlink, not an input or above/inside one (hub ids: their cached folder), not
    a mount point; an existing directory (``kind="dir"``) is empty, or is
    replaceme's and holds only files its record lists, unchanged (else refused
    even with ``overwrite``), and needs ``overwrite`` unless ``allow_existing``;
    an existing file (``kind="file"``) needs ``overwrite``, one of ``suffixes``,
    and to be listed, unchanged, in its folder's record; the folder it goes into
    can be created and written.

    Args:
        target: the output path as the user gave it.
        kind: ``"dir"`` or ``"file"``.
        inputs: paths the run reads (non-local names are ignored).
        overwrite: the user asked to replace an existing output.
        allow_existing: the caller handles an existing replaceme directory itself
            (``compare`` resumes one).
        option: the option's name, for messages.
        suffixes: for files, the suffixes an existing file must have to be replaced.
        owner_kind: an existing replaceme directory must be of this kind (a pruned
            model is not replaced by a comparison, nor the reverse).
    """
    if not str(target).strip():
        raise ReplacemeError(f"{option} is empty")
    path = Path(target).expanduser()
    if path.is_symlink():
        raise ReplacemeError(f"{option} {target} is a symbolic link; give the real path")
    resolved = check_not_input(target, inputs, option=option)
    restore_orphan(resolved)  # a run killed while replacing it left the previous output aside
    status = OutputStatus(resolved, exists=os.path.lexists(resolved))
    if status.exists and os.path.ismount(resolved):
        raise ReplacemeError(f"{option} {target} is a mount point, which cannot be replaced by renaming a finished "
                             f"output onto it; give a new folder inside it (for example {Path(str(target)) / 'out'})")
    if status.exists:
        if kind == "dir":
            _check_existing_dir(status, target, overwrite=overwrite or allow_existing, option=option,
                                owner_kind=owner_kind)
        else:
            _check_existing_file(status, target, overwrite=overwrite, option=option, suffixes=suffixes)
    _check_parent(resolved, target, option)
    return status


def _check_existing_file(status: OutputStatus, target: Any, *, overwrite: bool, option: str,
                         suffixes: tuple[str, ...]) -> None:
    """An existing file is replaced only with ``overwrite``, only when the record of its
    folder lists it and it is unchanged since replaceme wrote it."""
    resolved = status.path
    if resolved.is_dir():
        raise ReplacemeError(f"{option} {target} is a directory, not a file")
    if not overwrite:
        raise ReplacemeError(f"{option} {target} exists (use --overwrite to replace it)")
    if suffixes and resolved.suffix.lower() not in suffixes:
        raise ReplacemeError(f"{option} {target}: refusing to replace a file that is not {'/'.join(suffixes)}")
    own = read_ownership(resolved.parent)
    status.ownership = own
    if own is None or own.legacy or not own.owns(resolved.parent, resolved.name):
        why = "was changed since replaceme wrote it" if own and resolved.name in own.files else \
            "was not written by replaceme"
        raise ReplacemeError(f"{option} {target} {why}; refusing to replace a file that is not replaceme's as it "
                             f"wrote it, with or without --overwrite (choose another {option})")


def _check_existing_dir(status: OutputStatus, target: Any, *, overwrite: bool, option: str,
                        owner_kind: str | None) -> None:
    resolved = status.path
    if not resolved.is_dir():
        raise ReplacemeError(f"{option} {target} exists and is not a directory")
    status.empty = not any(resolved.iterdir())
    if status.empty:
        return
    status.ownership = own = read_ownership(resolved)
    if own is None or own.kind == FILES_KIND:
        raise ReplacemeError(f"{option} {target} is not empty and was not written by replaceme; "
                             f"refusing to replace it, with or without --overwrite (choose another {option})")
    if owner_kind is not None and own.kind != owner_kind:
        raise ReplacemeError(f"{option} {target} holds a replaceme {own.kind.replace('-', ' ')}, not a "
                             f"{owner_kind.replace('-', ' ')}; choose another {option}")
    if own.legacy:
        raise ReplacemeError(f"{option} {target} was written by an older replaceme that did not record what it "
                             f"wrote, so replaceme cannot tell whether you changed it; refusing to replace it "
                             f"(move it away, or choose another {option})")
    problems = own.describe_problems(resolved)
    if problems:
        raise ReplacemeError(f"{option} {target} holds {problems}; refusing to replace it, with or without "
                             f"--overwrite (move them, or choose another {option})")
    if not overwrite:
        raise ReplacemeError(f"{option} {target} exists (use --overwrite to replace it)")
