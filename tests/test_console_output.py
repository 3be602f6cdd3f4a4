"""What a command prints on stderr: levelled lines, no third-party chatter unless -v, one bar per step."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from rich.console import Console

from replaceme import console


def run(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("REPLACEME_NO_PROGRESS", "TQDM_DISABLE")}
    return subprocess.run([sys.executable, "-c", "from replaceme.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.slow
def test_evaluate_in_a_log_file_is_quiet_and_levelled(shared, tmp_path):
    model = shared / "models" / "stories260K"
    data = shared / "data"
    args = ["evaluate", str(model), "--tasks", "boolq", "--task-data", str(data), "--limit", "6",
            "--ppl", str(data / "tinystories" / "valid.txt"), "--max-ppl-tokens", "2000", "--bootstrap-iters", "1000"]
    quiet = run(*args, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "it/s" not in quiet.stderr and "%|" not in quiet.stderr  # no tqdm bars from lm-eval
    assert "Truncating" not in quiet.stderr  # lm-eval's warnings only with -v
    assert len(quiet.stderr) < 2000
    assert re.search(r"lm-eval boolq: log-likelihoods .* (\d+)/\1 ", quiet.stderr)  # one bar, ending N of N
    loud = run(*args[:1], *args[1:], "-v", cwd=tmp_path)  # -v after the command
    assert loud.returncode == 0, loud.stderr
    warned = [line for line in loud.stderr.splitlines() if "Truncating" in line]
    assert warned and all(line.startswith("WARNING") for line in warned)


def test_a_bar_never_counts_past_its_total_and_ends_complete(monkeypatch):
    monkeypatch.delenv("REPLACEME_NO_PROGRESS", raising=False)
    out = io.StringIO()
    monkeypatch.setattr(console, "stderr", Console(file=out, width=100, force_terminal=False))
    with console.LossBar("fit", total=100) as bar:
        for _ in range(108):  # e.g. L-BFGS evaluating its loss more often than it iterates
            bar.update(1, loss=0.5)
    assert "108/108" in out.getvalue() and "/100" not in out.getvalue().splitlines()[-1]
    out.truncate(0)
    with console.LossBar("converged early", total=100) as bar:
        bar.update(37, loss=0.1)
    assert "37/37" in out.getvalue()


def test_warnings_carry_their_level(capsys):
    import logging
    import warnings

    console.setup_logging(0)
    warnings.warn("something odd", UserWarning, stacklevel=1)
    logging.getLogger("transformers").warning("hidden at the default verbosity")
    logging.getLogger("transformers").error("shown: an error")
    err = capsys.readouterr().err
    assert err.startswith("WARNING ") and "something odd" in err.split("ERROR")[0]
    assert "hidden at the default verbosity" not in err and re.search(r"ERROR +shown: an error", err)


@pytest.mark.parametrize("fmt", ["plain", "markdown", "csv"])
def test_format_prints_the_table_as_text(fmt, tiny_dir, calib_file):
    import csv

    from click.testing import CliRunner

    from replaceme.cli import cli

    result = CliRunner().invoke(cli, ["evaluate", str(tiny_dir), "--ppl", str(calib_file), "--context-length", "32",
                                      "--bootstrap-iters", "200", "--format", fmt, "-v"])  # -v after the command
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if fmt == "csv":
        (row,) = list(csv.DictReader(io.StringIO(result.stdout)))
        assert row["benchmark"] == str(calib_file) and float(row["value"]) > 1 and float(row["stderr"]) > 0
    elif fmt == "markdown":
        assert lines[0].startswith("| benchmark | metric | value | stderr |") and lines[1].startswith("|---")
        assert len(lines) == 3
    else:
        assert lines[0].split() == ["benchmark", "metric", "value", "stderr", "tokens/docs"] and len(lines) == 3
