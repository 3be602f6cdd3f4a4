"""Every path checked after resolving (hub ids to their cached folder, ``~``), long
names, mount points, and write failures that name their real cause."""

from __future__ import annotations

import os
import resource

import pytest

from replaceme.errors import ReplacemeError, explain
from replaceme.outputs import atomic_directory, check_output, output_file, output_lock, write_text_atomic
from replaceme.outputs.failures import filesystem, write_failure


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding the model ``org/tiny`` (as ``hf download`` lays it out)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--org--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "blobs").mkdir()
    (repo / "blobs" / "f00d").write_text("{}")
    (snapshot / "config.json").symlink_to(repo / "blobs" / "f00d")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return repo, snapshot


@pytest.mark.parametrize("where", ["snapshot", "inside-snapshot", "blobs", "repo"])
def test_a_hub_id_protects_its_folder_in_the_cache(hub_cache, where):
    repo, snapshot = hub_cache
    target = {"snapshot": snapshot, "inside-snapshot": snapshot / "pruned", "blobs": repo / "blobs" / "out",
              "repo": repo}[where]
    with pytest.raises(ReplacemeError, match="the input .*models--org--tiny"):
        check_output(target, inputs=["org/tiny"], overwrite=True)
    check_output(repo.parent / "elsewhere", inputs=["org/tiny"])  # beside it is fine
    (repo / "refs" / "main").unlink()  # only another revision cached: still protected
    with pytest.raises(ReplacemeError, match="the input .*models--org--tiny"):
        check_output(target, inputs=["org/tiny"], overwrite=True)
    check_output(snapshot / "pruned", inputs=["org/not-cached"])  # a name not cached protects nothing


def test_home_is_expanded_the_same_way_by_checks_and_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(ReplacemeError, match="is inside the input"):
        check_output("~/model/out", inputs=["~/model"])
    with atomic_directory("~/out") as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "out" / "f").read_text() == "x" and not (tmp_path / "~").exists()


def test_a_valid_240_byte_name_is_not_refused_because_of_its_temporary(tmp_path):
    name = "n" * 240
    with atomic_directory(tmp_path / name) as tmp:
        (tmp / "f").write_text("x")
        assert len(tmp.name) < 200
    with output_file(tmp_path / (name[:236] + ".csv"), option="--csv") as path:
        write_text_atomic(path, "a,b\n")
    with output_lock(tmp_path / name):
        pass
    assert sorted(len(p.name) for p in tmp_path.iterdir() if not p.name.startswith(".")) == [240, 240]


def test_a_mount_point_as_output_is_refused_before_any_work():
    mounts = [p for p in ("/dev/shm", "/proc", "/sys", "/dev") if os.path.isdir(p) and os.path.ismount(p)]
    if not mounts:
        pytest.skip("no mount point to try")
    with pytest.raises(ReplacemeError, match="is a mount point.*give a new folder inside it"):
        check_output(mounts[0], overwrite=True)


def _in_child_with_file_size_limit(limit: int, work) -> str:
    """Run ``work`` in a forked child under ``ulimit -f`` (bytes); return what it reports."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            try:
                work()
                message = "no error"
            except ReplacemeError as exc:
                message = f"ReplacemeError: {exc}"
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                message = f"{type(exc).__name__}: {explain(exc)[0]}"
            os.write(write, message.encode()[:4000])
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as fh:
        return fh.read().decode()


def test_a_size_limit_while_writing_an_output_is_named_as_such(tmp_path):
    target = tmp_path / "out"

    def big_write():
        with atomic_directory(target) as tmp:
            (tmp / "weights.bin").write_bytes(b"\0" * (1 << 20))

    message = _in_child_with_file_size_limit(64 * 1024, big_write)
    assert message.startswith("ReplacemeError: no space left on ") and f"while writing {target}" in message
    assert "File too large" in message and not target.exists() and list(tmp_path.iterdir()) == []


def test_a_size_limit_inside_safetensors_is_not_called_a_corrupt_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    target = tmp_path / "out"

    def save():
        with atomic_directory(target) as tmp:
            save_file({"w": torch.zeros(1 << 18)}, str(tmp / "model.safetensors"))

    message = _in_child_with_file_size_limit(64 * 1024, save)
    assert message.startswith("ReplacemeError: no space left on "), message
    assert "corrupt" not in message and list(tmp_path.iterdir()) == []


def test_write_failures_name_their_cause_and_others_pass_through(tmp_path):
    err = write_failure(PermissionError(13, "Permission denied", "/data/out/x"), "/data/out", "renaming")
    assert str(err) == "permission denied while renaming /data/out/x (writing /data/out): Permission denied"
    assert write_failure(ValueError("a bug"), "/data/out", "writing") is None
    assert filesystem(tmp_path / "not" / "yet") == filesystem(tmp_path)
    message, code = explain(OSError(28, "No space left on device"))
    assert code == 2 and message.startswith("no space left on the device")


def test_the_python_api_keeps_spills_out_of_the_model(tmp_path):
    import replaceme

    model = tmp_path / "model"  # refused before anything is loaded: a folder is enough
    model.mkdir()
    with pytest.raises(ReplacemeError, match="--spill-dir .* is inside the input"):
        replaceme.prune(str(model), "uidl", 1, calibration=str(tmp_path / "calib.txt"), spill_dir=model / "spill")
    assert list(model.iterdir()) == []


def test_a_record_under_home_is_found_through_a_tilde(tmp_path, monkeypatch):
    from replaceme.outputs import check_owned_file, read_ownership, record_written

    monkeypatch.setenv("HOME", str(tmp_path))
    with atomic_directory("~/pruned", marker=("pruning.json", "pruned-model")) as tmp:
        (tmp / "README.md").write_text("card")
    check_owned_file("~/pruned", "README.md", kind="pruned-model", option="--model-card")
    (tmp_path / "pruned" / "README.md").write_text("card, with results")
    record_written("~/pruned", "~/pruned/README.md")
    assert read_ownership("~/pruned").owns(tmp_path / "pruned", "README.md")
    from pathlib import Path

    from replaceme.compare.store import RowStore

    assert RowStore(Path("~/cmp")).out == tmp_path / "cmp"  # compare writes where its checks looked
    assert not (tmp_path / "~").exists()
