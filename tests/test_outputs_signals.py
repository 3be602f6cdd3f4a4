"""SIGTERM and SIGHUP end a run like Ctrl-C: locks released, temporaries removed,
one line on stderr, exit 128 + N; the previous handlers are restored afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from replaceme.cli.signals import Terminated, terminating_like_ctrl_c


def test_a_signal_raises_like_ctrl_c_and_the_old_handler_comes_back():
    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        with pytest.raises(Terminated) as err:
            with terminating_like_ctrl_c():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # interrupted at once
        assert isinstance(err.value, KeyboardInterrupt) and err.value.exit_code == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_prune_ended_by_a_signal_leaves_no_lock_and_no_partial_output(tmp_path, tiny_dir, calib_file, signum):
    out = tmp_path / "out"
    lock = tmp_path / ".out.replaceme.lock"
    cmd = [sys.executable, "-c", "from replaceme.cli import main; main()", "prune", str(tiny_dir), "-m", "uidl", "-n", "1",
           "--calib", str(calib_file), "--calib-samples", "64", "--max-length", "64", "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not lock.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("INFO", "WARNING"))]
    assert proc.returncode == 128 + signum, err
    assert lines == [f"Error: interrupted by {signal.Signals(signum).name}"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt", "tiny"]
