"""The statistics cache checks its own key and format; an unusable cache location is
a warning; pruned outputs carry the source's tokenizer files and ordinary
permissions; compare retries failed rows; the error boundary maps library errors;
the ridge search cannot loop."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat

import pytest
import torch
from click.testing import CliRunner

from replaceme.cli import cli
from replaceme.outputs import record_written
from replaceme.errors import INTERNAL_ERROR, USER_ERROR, explain
from replaceme.stats.cache import FORMAT_VERSION, cache_path, load_cached, save_cached
from replaceme.stats.store import ActivationStats


def _stats() -> ActivationStats:
    stats = ActivationStats(num_layers=3, hidden_size=4)
    stats.angular = {1: {1: 0.25, 2: 0.5}}
    return stats


def test_a_cache_file_is_used_only_for_its_own_key_and_format(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("replaceme"), "propagate", True)  # a CLI run in this process turns it off
    save_cached("a" * 32, _stats())
    assert load_cached("a" * 32).angular == {1: {1: 0.25, 2: 0.5}}
    # a file from another run copied under this key: not used
    shutil.copyfile(cache_path("a" * 32), cache_path("b" * 32))
    with caplog.at_level(logging.WARNING, logger="replaceme"):
        assert load_cached("b" * 32) is None
    assert "another key or version" in caplog.text
    # the right key, another format version or another structure: recomputed, no exception
    torch.save({"format": FORMAT_VERSION - 1, "key": "c" * 32, "stats": {}}, cache_path("c" * 32))
    assert load_cached("c" * 32) is None
    torch.save({"format": FORMAT_VERSION, "key": "d" * 32, "stats": {"gram": 1}}, cache_path("d" * 32))
    assert load_cached("d" * 32) is None
    cache_path("e" * 32).write_bytes(b"not a torch file")
    assert load_cached("e" * 32) is None


def test_an_unusable_cache_location_is_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(logging.getLogger("replaceme"), "propagate", True)  # a CLI run in this process turns it off
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("REPLACEME_CACHE", str(blocker))
    with caplog.at_level(logging.WARNING, logger="replaceme"):
        assert save_cached("a" * 32, _stats()) is None
        assert load_cached("a" * 32) is None
    assert "going on without the cache" in caplog.text
    assert blocker.read_text().startswith("a file")


def test_prune_goes_on_without_a_usable_cache(tmp_path, tiny_dir, calib_file, monkeypatch):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("REPLACEME_CACHE", str(blocker))
    result = CliRunner().invoke(cli, ["prune", str(tiny_dir), "-m", "uidl", "-n", "1", "--calib", str(calib_file),
                                      "--calib-samples", "4", "--max-length", "16", "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "without the cache" in result.stderr
    assert (tmp_path / "out" / "pruning.json").is_file()


def test_pruned_output_has_every_tokenizer_file_and_ordinary_permissions(tmp_path, tiny_dir):
    (tiny_dir / "tokenizer.model").write_bytes(b"\x00sentencepiece model bytes")
    (tiny_dir / "added_tokens.json").write_text("{}")
    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(cli, ["prune", str(tiny_dir), "-m", "block-removal", "-n", "1", "-o", "start", "2",
                                          "--output", str(tmp_path / "out")])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert (out / "tokenizer.model").read_bytes() == (tiny_dir / "tokenizer.model").read_bytes()
    assert (out / "added_tokens.json").is_file()
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for path in out.iterdir():  # the record too
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    owned = json.loads((out / ".replaceme-record.json").read_text())
    assert owned["kind"] == "pruned-model" and "tokenizer.model" in owned["files"]
    assert owned["files"]["tokenizer.model"]["sha256"] == hashlib.sha256((out / "tokenizer.model").read_bytes()).hexdigest()
    # the source is untouched, and no temporary or lock is left beside the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny"]


@pytest.mark.slow
def test_compare_retries_a_failed_row_once_its_cause_is_fixed(tmp_path, tiny_dir, calib_file):
    out = tmp_path / "cmp"
    args = ["compare", str(tiny_dir), "-m", "uidl", "-n", "1", "--calib", str(calib_file), "--calib-samples", "8",
            "--max-length", "32", "--ppl", str(calib_file), "--context-length", "32", "--output", str(out), "--json"]
    rows = out / "rows"
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    (done,) = [p for p in rows.iterdir() if json.loads(p.read_text())["method"] == "uidl"]
    row = json.loads(done.read_text())
    row["error"], row["metrics"] = "RuntimeError: simulated failure", {}
    done.write_text(json.dumps(row))  # the row as a run whose method failed records it (and lists it as written)
    record_written(out, done)
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    fixed = json.loads(done.read_text())
    assert fixed["error"] is None and fixed["metrics"], "the failed row was not retried"


def test_compare_creates_nothing_when_it_fails_before_the_work(tmp_path, tiny_dir, calib_file):
    out = tmp_path / "new" / "cmp"
    result = CliRunner().invoke(cli, ["compare", str(tiny_dir), "-m", "uidl", "--calib", str(calib_file),
                                      "--ppl", str(tmp_path / "missing.txt"), "--output", str(out)])
    assert result.exit_code == 2
    assert not (tmp_path / "new").exists()


def test_library_errors_become_clear_lines():
    import yaml

    assert explain(FileNotFoundError(2, "No such file or directory", "/x/y"))[0] == "/x/y: No such file or directory"
    assert explain(PermissionError(13, "Permission denied", "/root/f")) == ("/root/f: Permission denied", USER_ERROR)
    try:
        json.loads('{"a": ')
    except json.JSONDecodeError as exc:
        assert explain(exc)[0].startswith("invalid JSON at line 1")
    try:
        yaml.safe_load("a: [")
    except yaml.YAMLError as exc:
        assert explain(exc)[0].startswith("invalid YAML")
    from safetensors import SafetensorError

    assert "safetensors" in explain(SafetensorError("header too large"))[0]
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = OSError(28, "No space left on device", "/data/out")
    assert explain(wrapped) == ("no space left on the device while writing /data/out (No space left on device); "
                                "free some space, raise the limit, or write elsewhere", USER_ERROR)
    assert explain(ValueError("embedded null byte")) == ("a path or name contains a NUL character", USER_ERROR)
    message, code = explain(TypeError("bug"))
    assert code == INTERNAL_ERROR and "--debug" in message


@pytest.mark.parametrize("alpha", [math.nan, math.inf, -1.0])
def test_the_ridge_search_refuses_bad_alpha_instead_of_looping(alpha):
    from replaceme_linear.lstsq_solve import solve_lstsq

    x = torch.randn(64, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="alpha"):
        solve_lstsq(x.T @ x, x.T @ x, alpha)


def test_the_ridge_search_is_bounded_on_non_finite_statistics():
    from replaceme_linear.lstsq_solve import solve_lstsq

    a = torch.eye(4, dtype=torch.float64)
    a[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        solve_lstsq(a, a, 0.0)


@pytest.mark.slow
def test_two_prunes_racing_for_one_output(tmp_path, tiny_dir, calib_file):
    """Two processes prune into the same folder at once: one writes it, the other fails in
    one line (at the lock, or at the final rename), and the folder holds a complete model."""
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from replaceme.cli import main; main()", "prune", str(tiny_dir), "-m", "uidl", "-n", "1", "--calib",
           str(calib_file), "--calib-samples", "4", "--max-length", "16", "--no-cache", "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    (loser,) = [err for code, err in results if code == 2]
    errors = [line for line in loser.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and re.search("another replaceme run|another run|exists \\(use --overwrite", errors[0]), loser
    assert "Traceback" not in loser
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 5
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
