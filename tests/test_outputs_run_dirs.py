"""Temporaries of --offload, spills and cache writes live under one run-directory
scheme, and what a killed run leaves is removed by a later run (on this host)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from replaceme.offload.window import DiskStore
from replaceme.outputs.runs import OWNER_FILE, clean_stale_runs, host_tag, make_run_dir
from replaceme.stats.spill import Spill


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_directories_are_named_owned_and_removed(tmp_path):
    with Spill(tmp_path) as spill, DiskStore(tmp_path) as store:
        for run in (spill, store):
            assert run.path.parent == tmp_path and f"-{host_tag()}-{os.getpid()}-" in run.path.name
            assert json.loads((run.path / OWNER_FILE).read_text())["pid"] == os.getpid()
        assert store.path.name.startswith("replaceme-window-") and spill.path.name.startswith("replaceme-spill-")
    assert list(tmp_path.iterdir()) == []


def test_what_a_killed_run_left_is_removed_by_the_next_one(tmp_path):
    dead = _dead_pid()
    killed = tmp_path / f"replaceme-window-{host_tag()}-{dead}-0000abcd"
    killed.mkdir()
    (killed / OWNER_FILE).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": 0}))
    (killed / "0.bin").write_bytes(b"\0" * 1024)
    half_cache = tmp_path / f".key.pt.replaceme-{host_tag()}-{dead}-0000abcd.tmp.pt"  # an interrupted cache write
    half_cache.write_bytes(b"half")
    users = tmp_path / "replaceme-notes"  # a folder of the user's: no owner file, never touched
    users.mkdir()
    other_host = tmp_path / "replaceme-spill-ffffff-1-00000000"
    other_host.mkdir()
    (other_host / OWNER_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    live = make_run_dir(tmp_path, "replaceme-spill-")
    assert not killed.exists() and not half_cache.exists()
    assert users.exists() and other_host.exists() and live.exists()
    assert clean_stale_runs(tmp_path) == []  # nothing more to remove; the live run is kept


def test_the_spill_folder_expands_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with Spill("~/spill") as spill:
        assert spill.path.parent == tmp_path / "spill"
    assert not (tmp_path / "~").exists()


def test_any_later_run_clears_what_killed_runs_left_in_its_work_folders(tmp_path, monkeypatch):
    from replaceme.outputs import check_work_dirs

    dead = _dead_pid()
    killed = tmp_path / "spills" / f"replaceme-spill-{host_tag()}-{dead}-0000abcd"
    killed.mkdir(parents=True)
    (killed / OWNER_FILE).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": 0}))
    monkeypatch.setenv("REPLACEME_CACHE", str(tmp_path / "cache"))
    stats = tmp_path / "cache" / "stats"
    stats.mkdir(parents=True)
    half = stats / f".k.pt.replaceme-{host_tag()}-{dead}-0000abcd.tmp.pt"
    half.write_bytes(b"half")
    check_work_dirs([], spill_dir=tmp_path / "spills")  # a run that only reads the cache, say
    assert not killed.exists() and not half.exists()
