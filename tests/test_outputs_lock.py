"""The output lock: who holds it (host, pid, start time), when a left-over lock is
taken over, --break-lock, and messages that name the lock file."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from replaceme.errors import ReplacemeError
from replaceme.outputs import output_lock
from replaceme.outputs.lock import breaking_locks, lock_path
from replaceme.outputs.runs import short_name


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def left(target, **owner):
    lock = lock_path(target)
    lock.write_text(json.dumps(owner))
    return lock


def test_the_lock_records_its_holder_and_goes_away(tmp_path):
    target = tmp_path / "out"
    with output_lock(target) as lock:
        owner = json.loads(lock.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert abs(owner["started"] - time.time()) < 60
    assert not lock.exists()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("replaceme"), "propagate", True)  # a CLI run may have turned it off
    target = tmp_path / "out"
    lock = left(target, pid=_dead_pid(), host=socket.gethostname(), started=time.time())
    with output_lock(target):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "taking over the lock" in caplog.text and str(lock) in caplog.text


def test_a_recent_lock_of_another_host_is_refused_naming_the_lock_file(tmp_path):
    target = tmp_path / "out"
    lock = left(target, pid=123, host="node-17", started=time.time() - 60)
    with pytest.raises(ReplacemeError) as err:
        with output_lock(target):
            pass
    text = str(err.value)
    assert str(lock) in text and "node-17" in text and "--break-lock" in text and "\n" not in text
    assert json.loads(lock.read_text())["host"] == "node-17"  # left as it was
    with breaking_locks(), output_lock(target):  # --break-lock
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_a_stale_lock_of_another_host_is_taken_over(tmp_path, monkeypatch):
    target = tmp_path / "out"
    left(target, pid=123, host="node-17", started=time.time() - 25 * 3600)
    with output_lock(target):
        pass
    left(target, pid=123, host="node-17", started=time.time() - 7200)
    monkeypatch.setenv("REPLACEME_LOCK_STALE_HOURS", "1")
    with output_lock(target):
        pass


def test_a_lock_held_by_a_live_run_is_refused_and_named(tmp_path):
    target = tmp_path / "out"
    code = ("import sys, time\nfrom replaceme.outputs import output_lock\n"
            f"with output_lock({str(target)!r}):\n    print('locked', flush=True)\n    time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ReplacemeError, match=f"pid {holder.pid} on .*lock file {lock_path(target)}"):
            with output_lock(target):
                pass
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_permission_error_on_the_lock_names_the_lock_and_the_operation(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ReplacemeError, match=f"cannot create the lock file {lock_path(folder / 'out')}"):
            with output_lock(folder / "out"):
                pass
    finally:
        folder.chmod(0o755)


def test_the_real_failure_is_not_hidden_by_the_lock(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="the real failure"):
        with output_lock(target) as lock:
            lock.unlink()  # the lock file vanished meanwhile: releasing it must not raise instead
            raise RuntimeError("the real failure")


def test_long_names_get_short_locks(tmp_path):
    target = tmp_path / ("n" * 240)
    assert len(lock_path(target).name) < 160 and short_name(target) != target.name
    with output_lock(target):
        pass


def test_a_lock_path_that_cannot_be_opened_names_the_lock_and_the_operation(tmp_path):
    target = tmp_path / "out"
    lock_path(target).mkdir()  # something that is not a file where the lock goes
    with pytest.raises(ReplacemeError, match=f"cannot create the lock file {lock_path(target)} for --output"):
        with output_lock(target):
            pass
