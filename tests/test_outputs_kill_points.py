"""Property-based tests of the file-system layer (hypothesis).

- Random trees of the user's files, inside and beside replaceme outputs, never lose
  a byte, whatever ``--overwrite`` says.
- A run killed at any point of the replacement sequence (a forked child that
  exits at once, with no cleanup, at the N-th file-system operation) always leaves
  the old or the new output whole, and the next run finds it in place (restoring
  a previous output moved aside) and leaves no temporary behind.
"""

from __future__ import annotations

import os
import shutil
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replaceme.outputs.directories as directories
from replaceme.errors import ReplacemeError
from replaceme.outputs import RECORD_FILE, atomic_directory, check_output, clean_stale, output_lock

EXAMPLES = settings(max_examples=int(os.environ.get("REPLACEME_FUZZ_EXAMPLES", 25)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

names = st.text(string.ascii_lowercase + "._-", min_size=1, max_size=8).filter(lambda n: n not in (".", ".."))
trees = st.dictionaries(st.lists(names, min_size=1, max_size=3).map("/".join), st.binary(max_size=64), max_size=6)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (the record left out) with its bytes."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            full = Path(dirpath) / f
            rel = full.relative_to(root).as_posix()
            if rel != RECORD_FILE:
                out[rel] = full.read_bytes()
    return out


def plant(root: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """Write ``files`` under ``root`` where the path is free (a name may not be both file and folder)."""
    planted = {}
    for rel, data in files.items():
        path = root / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                continue
            path.write_bytes(data)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue
        planted[rel] = data
    return planted


def write_output(target: Path, files: dict[str, bytes], overwrite: bool = True) -> None:
    with atomic_directory(target, overwrite=overwrite, marker=("pruning.json", "pruned-model")) as tmp:
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)


OLD = {"model.safetensors": b"old weights", "config.json": b"{}", "sub/tok.json": b"old"}
NEW = {"model.safetensors": b"new weights!", "pruning.json": b"{}", "README.md": b"card"}


@EXAMPLES
@given(inside=trees, beside=trees, overwrite=st.booleans())
def test_user_files_inside_and_beside_outputs_never_lose_a_byte(tmp_path_factory, inside, beside, overwrite):
    root = tmp_path_factory.mktemp("fs")
    out = root / "out"
    write_output(out, OLD)
    mine_inside = plant(out, inside)
    mine_beside = plant(root, {f"beside/{k}": v for k, v in beside.items()})
    try:
        write_output(out, NEW, overwrite=overwrite)
        replaced = True
    except ReplacemeError as exc:
        replaced = False
        assert "\n" not in str(exc)
    changed = {rel for rel, data in mine_inside.items() if OLD.get(rel) != data}  # a user file, or an edit of ours
    assert replaced == (overwrite and not changed)
    for rel, data in mine_beside.items():
        assert (root / rel).read_bytes() == data
    if not replaced:
        assert tree(out) == {**OLD, **mine_inside}
    assert sorted(p.name for p in root.iterdir()) == sorted({"out"} | ({"beside"} if mine_beside else set()))


class Killed(Exception):
    pass


def _killing(n: int):
    """Make the N-th file-system operation of the replacement end the process at once (like SIGKILL)."""
    count = [0]

    def wrap(fn):
        def inner(*args, **kwargs):
            count[0] += 1
            if count[0] == n:
                os._exit(137)
            return fn(*args, **kwargs)
        return inner

    for mod, name in ((os, "rename"), (os, "replace"), (os, "unlink"), (os, "mkdir"), (os, "chmod"), (shutil, "rmtree"),
                      (directories, "rename_noreplace")):
        setattr(mod, name, wrap(getattr(mod, name)))


def _run_killed_at(n: int, out: Path) -> int:
    pid = os.fork()
    if pid == 0:  # the child: replace the output, killed at step n
        try:
            _killing(n)
            write_output(out, NEW)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@settings(max_examples=int(os.environ.get("REPLACEME_FUZZ_EXAMPLES", 25)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(n=st.integers(min_value=1, max_value=60), beside=trees)
def test_a_run_killed_at_any_step_leaves_the_old_or_the_new_output(tmp_path_factory, n, beside):
    root = tmp_path_factory.mktemp("kill")
    out = root / "out"
    write_output(out, OLD)
    mine_beside = plant(root, {f"beside/{k}": v for k, v in beside.items()})
    _run_killed_at(n, out)
    # the next run: checks (restoring a previous output moved aside), locks, cleans
    status = check_output(out, overwrite=True, owner_kind="pruned-model")
    assert status.exists
    with output_lock(out):
        clean_stale(out)
    assert tree(out) in (OLD, NEW)
    assert sorted(p.name for p in root.iterdir()) == sorted({"out"} | ({"beside"} if mine_beside else set()))
    for rel, data in mine_beside.items():
        assert (root / rel).read_bytes() == data


@pytest.mark.slow  # forks and kills a process at every step
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_every_kill_point_of_one_replacement(tmp_path):
    """Each step in turn, not only those hypothesis draws: kill at step 1, 2, ... until a
    run gets through every step."""
    seen = set()
    for n in range(1, 200):
        root = tmp_path / str(n)
        root.mkdir()
        out = root / "out"
        write_output(out, OLD)
        code = _run_killed_at(n, out)
        orphaned = not out.exists()  # killed between moving the old output aside and the new one in
        check_output(out, overwrite=True)
        with output_lock(out):
            clean_stale(out)
        now = tree(out)
        assert now in (OLD, NEW), n
        assert sorted(p.name for p in root.iterdir()) == ["out"], n
        seen.add((code, now == NEW, orphaned))
        if code == 0:  # no step left to kill
            break
    assert (137, False, True) in seen  # the window where no output was in place was hit, and the old one restored
    assert (0, True, False) in seen and n > 10  # and the sequence ran to its end


def test_an_interrupt_at_any_step_leaves_one_whole_output_and_nothing_beside_it(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM (a KeyboardInterrupt raised at the N-th file-system operation):
    unlike a kill, the run unwinds, so the old or the new output is in place at once and
    no temporary or lock is left."""
    for n in range(1, 200):
        root = tmp_path / str(n)
        root.mkdir()
        out = root / "out"
        write_output(out, OLD)
        count = [0]
        with monkeypatch.context() as patch:
            for mod, name in ((os, "rename"), (os, "replace"), (os, "unlink"), (os, "mkdir"), (os, "chmod"),
                              (shutil, "rmtree"), (directories, "rename_noreplace")):
                def inner(*args, _fn=getattr(mod, name), **kwargs):
                    count[0] += 1
                    if count[0] == n:
                        raise KeyboardInterrupt
                    return _fn(*args, **kwargs)
                patch.setattr(mod, name, inner)
            try:
                write_output(out, NEW)
                completed = True
            except KeyboardInterrupt:
                completed = False
        assert tree(out) in (OLD, NEW), n
        # signals are deferred while the replaced output is deleted (step 4) and while the lock file is
        # removed; an exception injected there may leave a piece of either, which a later run removes
        with output_lock(out):
            clean_stale(out)
        left = sorted(p.name for p in root.iterdir() if p.name != "out")
        assert left == [] or (tree(out) == NEW and all(name.endswith(".old") for name in left)), (n, left)
        if completed:
            break
    assert completed and n > 10
