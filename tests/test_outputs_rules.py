"""Output safety (replaceme.outputs): what may be created or replaced, atomic placement,
unique temporaries, stale leftovers, locks, races and permissions. No models here:
these are the rules every command goes through."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from replaceme.errors import ReplacemeError
from replaceme.outputs import (
    OWNER_FILE,
    RECORD_FILE,
    atomic_directory,
    atomic_file,
    check_output,
    clean_stale,
    output_lock,
    read_ownership,
    record_tree,
    temp_name,
    write_text_atomic,
)


def snapshot(root):
    """Every path under ``root`` with its bytes (files) or None (dirs): compare before/after."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in files:
            full = os.path.join(dirpath, f)
            out[os.path.relpath(full, root)] = open(full, "rb").read()
    return out


@pytest.fixture
def source(tmp_path):
    """A 'model directory' (an input) inside a folder with the user's other files."""
    home = tmp_path / "home"
    model = home / "models" / "src"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    (home / "notes.txt").write_text("mine")
    return model


def mine(path, files=("a.txt",), kind="pruned-model"):
    """A directory as replaceme writes it: files plus a record listing them by content."""
    path.mkdir(parents=True, exist_ok=True)
    for f in files:
        (path / f).write_text("old")
    (path / "pruning.json").write_text(json.dumps({"method": "x"}))
    record_tree(path, kind)
    return path


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("where", ["same", "parent", "grandparent", "inside", "dotdot", "symlink-to-parent", "file"])
def test_inputs_are_never_outputs(source, tmp_path, where, overwrite):
    home = source.parents[1]
    link = tmp_path / "link"
    link.symlink_to(source.parent)
    target = {
        "same": source,
        "parent": source.parent,
        "grandparent": home,
        "inside": source / "out",
        "dotdot": source / "sub" / ".." / ".." / "src",
        "symlink-to-parent": link / "src",
        "file": source / "model.safetensors",
    }[where]
    before = snapshot(tmp_path)
    with pytest.raises(ReplacemeError, match="the input") as err:
        check_output(target, inputs=[source], overwrite=overwrite)
    assert "\n" not in str(err.value)
    with pytest.raises(ReplacemeError):
        with atomic_directory(target, overwrite=overwrite, inputs=[source]) as tmp:
            (tmp / "x").write_text("new")
    assert snapshot(tmp_path) == before


def test_input_files_with_slices_are_protected(tmp_path):
    data = tmp_path / "data" / "calib.txt"
    data.parent.mkdir()
    data.write_text("text")
    with pytest.raises(ReplacemeError, match="the input"):
        check_output(tmp_path / "data", inputs=[f"{data}[:10]"], overwrite=True)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_replaceme_did_not_write_is_refused(tmp_path, overwrite):
    target = tmp_path / "out"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    with pytest.raises(ReplacemeError, match="not written by replaceme"):
        check_output(target, overwrite=overwrite)
    # a marker file that is not replaceme's own record does not count
    (target / "pruning.json").write_text(json.dumps({"method": "uidl"}))
    with pytest.raises(ReplacemeError, match="not written by replaceme"):
        check_output(target, overwrite=overwrite)
    assert (target / "thesis.tex").read_text() == "years of work"


def test_replacemes_directory_with_a_foreign_file_is_refused(tmp_path):
    target = mine(tmp_path / "out")
    (target / "notes.md").write_text("added by the user")
    with pytest.raises(ReplacemeError, match="did not write.*notes.md"):
        check_output(target, overwrite=True)


def test_existing_output_needs_overwrite_and_empty_dirs_are_fine(tmp_path):
    target = mine(tmp_path / "out")
    with pytest.raises(ReplacemeError, match="use --overwrite"):
        check_output(target)
    assert check_output(target, overwrite=True).ownership.kind == "pruned-model"
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_directory(empty) as tmp:
        (tmp / "f").write_text("x")
    assert (empty / "f").read_text() == "x"


def test_wrong_kinds_and_unwritable_places(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ReplacemeError, match="not a directory"):
        check_output(a_file, overwrite=True)
    with pytest.raises(ReplacemeError, match="not a directory"):
        check_output(a_file / "sub" / "out")
    with pytest.raises(ReplacemeError, match="is a directory"):
        check_output(tmp_path, kind="file", overwrite=True)
    with pytest.raises(ReplacemeError, match="use --overwrite"):
        check_output(a_file, kind="file")
    with pytest.raises(ReplacemeError, match="refusing to replace a file"):
        check_output(a_file, kind="file", overwrite=True, suffixes=(".csv",))
    with pytest.raises(ReplacemeError, match="is empty"):
        check_output("  ")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ReplacemeError, match="symbolic link"):
        check_output(link)
    if os.path.isdir("/proc/self"):
        with pytest.raises(ReplacemeError, match="not writable|not a directory"):
            check_output("/proc/self/replaceme-out")


def test_replacing_keeps_no_backup_and_touches_no_sibling(tmp_path):
    target = mine(tmp_path / "out")
    users_old = tmp_path / ".out.old"  # the fixed backup name of old versions: a user's folder here
    users_old.mkdir()
    (users_old / "keep").write_text("keep")
    with atomic_directory(target, overwrite=True, marker=("pruning.json", "pruned-model")) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.replaceme-") and tmp.name.endswith(".partial")
        (tmp / "new.txt").write_text("new")
        (tmp / "pruning.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == [RECORD_FILE, "new.txt", "pruning.json"]
    assert sorted(read_ownership(target).files) == ["new.txt", "pruning.json"]
    assert (users_old / "keep").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", "out"]


def test_failure_leaves_the_old_output_and_no_temporary(tmp_path):
    target = mine(tmp_path / "out")
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError):
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("crash")
    assert snapshot(tmp_path) == before


def test_two_runs_use_different_temporary_names(tmp_path):
    names = {temp_name(tmp_path / "out", ".partial").name for _ in range(50)}
    assert len(names) == 50


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "out"
    dead = tmp_path / f".out.replaceme-x-{_dead_pid()}-0000.partial"
    dead.mkdir()
    (dead / OWNER_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": 0}))
    (dead / "model.safetensors").write_text("half")
    alive = tmp_path / ".out.replaceme-x-1-1111.partial"
    alive.mkdir()
    (alive / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))
    foreign = tmp_path / ".out.something.partial"  # not ours: never touched
    foreign.mkdir()
    removed = clean_stale(target)
    assert removed == [dead] and alive.exists() and foreign.exists()
    with atomic_directory(target) as tmp:  # a run cleans up before it starts
        (tmp / "f").write_text("x")
    assert not dead.exists()


def test_a_second_writer_is_refused_at_once(tmp_path):
    target = tmp_path / "out"
    code = (
        "import sys, time\n"
        "from replaceme.outputs import output_lock\n"
        f"with output_lock({str(target)!r}):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ReplacemeError, match="another replaceme run"):
            with output_lock(target):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(target):  # the killed holder's lock is taken over
        pass
    assert not any(tmp_path.iterdir())


def test_the_loser_of_a_race_fails_and_the_winners_output_is_intact(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(ReplacemeError, match="another run"):
        with atomic_directory(target) as tmp:
            (tmp / "loser").write_text("loser")
            mine(target, files=("winner",))  # the other run finished first
    assert sorted(p.name for p in target.iterdir()) == [RECORD_FILE, "pruning.json", "winner"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # the same for files written without replacement
    f = tmp_path / "table.csv"
    with pytest.raises(ReplacemeError, match="another run"):
        with atomic_file(f, replace=False) as tmp:
            tmp.write_text("loser")
            f.write_text("winner")
    assert f.read_text() == "winner" and sorted(p.name for p in tmp_path.iterdir()) == ["out", "table.csv"]


def test_outputs_have_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir()
            fd = os.open(tmp / "weights", os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        write_text_atomic(tmp_path / "out" / "results.csv", "a,b\n")
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "weights").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "results.csv").stat().st_mode) == 0o644


def test_the_old_module_re_exports_the_new_homes():
    import replaceme.paths as old
    from replaceme import outputs, schema
    from replaceme.cache_location import cache_dir

    assert old.atomic_directory is outputs.atomic_directory and old.check_output is outputs.check_output
    assert old.cache_dir is cache_dir and old.read_yaml_mapping is schema.read_yaml_mapping
