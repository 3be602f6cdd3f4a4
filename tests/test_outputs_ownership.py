"""Ownership by content: replaceme replaces or deletes a file only when its folder's
record lists it by exact path and it is unchanged since (size, time, SHA-256).
No models: the rules every command goes through, on real files."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from replaceme.errors import ReplacemeError
from replaceme.outputs import (
    RECORD_FILE,
    atomic_directory,
    check_output,
    check_owned_file,
    output_file,
    read_ownership,
    record_written,
    write_json_atomic,
    write_text_atomic,
)


def pruned(path, weights=b"w" * 64):
    """A pruned-model folder written the way save_pruned writes one."""
    with atomic_directory(path, overwrite=True, marker=("pruning.json", "pruned-model")) as tmp:
        (tmp / "model.safetensors").write_bytes(weights)
        (tmp / "pruning.json").write_text(json.dumps({"method": "uidl"}))
        (tmp / "README.md").write_text("card")
    return path


def comparison(path):
    """A comparison folder written the way compare writes one: each file recorded as written."""
    path.mkdir()
    write_json_atomic(path / "manifest.json", {"shared_hash": "x"})
    record_written(path, path / "manifest.json", kind="comparison")
    for name in ("rows/a.json", "rows/b.json", "results.csv", "results.md", "retained.png"):
        write_text_atomic(path / name, name)
        record_written(path, path / name)
    return path


def test_the_record_lists_exact_paths_with_size_and_hash(tmp_path):
    out = pruned(tmp_path / "out")
    own = read_ownership(out)
    assert own.kind == "pruned-model" and sorted(own.files) == ["README.md", "model.safetensors", "pruning.json"]
    entry = own.files["model.safetensors"]
    assert entry["size"] == 64 and len(entry["sha256"]) == 64
    assert check_output(out, overwrite=True, owner_kind="pruned-model").ownership.kind == "pruned-model"


@pytest.mark.parametrize("edit", ["other-size", "same-size", "same-size-same-time"])
def test_a_model_fine_tuned_and_saved_back_is_never_replaced(tmp_path, edit):
    out = pruned(tmp_path / "out")
    weights = out / "model.safetensors"
    st = weights.stat()
    weights.write_bytes(b"f" * (80 if edit == "other-size" else 64))
    if edit == "same-size-same-time":  # the time is restored too: only the hash can tell
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    if edit != "same-size-same-time":
        with pytest.raises(ReplacemeError, match=r"changed since replaceme wrote them \(model.safetensors\)"):
            check_output(out, overwrite=True)
        with pytest.raises(ReplacemeError, match="changed since"):
            pruned(out)
        assert weights.read_bytes()[:1] == b"f"
    else:  # documented limit: size and time unchanged count as unchanged (no full read of every file)
        check_output(out, overwrite=True)


def test_a_copy_with_new_times_but_the_same_bytes_is_still_replaceme_s(tmp_path):
    out = pruned(tmp_path / "out")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, copy_function=shutil.copyfile)  # new modification times
    assert check_output(copy, overwrite=True).ownership.kind == "pruned-model"
    pruned(copy, weights=b"n" * 10)
    assert (copy / "model.safetensors").read_bytes() == b"n" * 10


@pytest.mark.parametrize("user_file", ["figures/fig1.png", "results.docx", "results.final/paper.tex", "rows/notes.json",
                                       "rows/sub/a.json", ".hidden", "manifest.json.bak"])
def test_files_the_user_adds_to_a_comparison_are_never_deleted(tmp_path, user_file):
    out = comparison(tmp_path / "cmp")
    path = out / user_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("the user's")
    with pytest.raises(ReplacemeError, match=f"did not write \\({user_file}\\)"):
        check_output(out, overwrite=True, owner_kind="comparison")
    assert path.read_text() == "the user's"


def test_a_file_deleted_by_the_user_loses_nothing_and_does_not_block(tmp_path):
    out = comparison(tmp_path / "cmp")
    (out / "results.md").unlink()
    assert check_output(out, overwrite=True).exists


def test_a_record_of_an_older_version_cannot_vouch_for_contents(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "model.safetensors").write_text("w")
    (out / "pruning.json").write_text(json.dumps(
        {"replaceme_output": {"tool": "replaceme", "kind": "pruned-model", "files": ["*"]}}))
    with pytest.raises(ReplacemeError, match="older replaceme that did not record what it wrote"):
        check_output(out, overwrite=True)


def write_csv(target, text, overwrite=False):
    with output_file(target, overwrite=overwrite, option="--csv", suffixes=(".csv",)) as path:
        write_text_atomic(path, text, replace=overwrite)


def test_single_files_are_replaced_only_when_replaceme_wrote_them_unchanged(tmp_path):
    users = tmp_path / "users.csv"
    users.write_text("precious")
    with pytest.raises(ReplacemeError, match="was not written by replaceme"):
        write_csv(users, "new", overwrite=True)
    assert users.read_text() == "precious"
    ours = tmp_path / "d.csv"
    write_csv(ours, "one")
    own = read_ownership(tmp_path)
    assert own.kind == "files" and sorted(own.files) == ["d.csv"]
    with pytest.raises(ReplacemeError, match="use --overwrite"):
        write_csv(ours, "two")
    write_csv(ours, "two", overwrite=True)
    assert ours.read_text() == "two"
    ours.write_text("edited by hand")
    with pytest.raises(ReplacemeError, match="was changed since replaceme wrote it"):
        write_csv(ours, "three", overwrite=True)
    assert ours.read_text() == "edited by hand" and users.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD_FILE, "d.csv", "users.csv"]


def test_the_model_card_is_rewritten_only_while_unchanged(tmp_path):
    out = pruned(tmp_path / "out")
    check_owned_file(out, "README.md", kind="pruned-model", option="--model-card")
    (out / "README.md").write_text("my own card")
    with pytest.raises(ReplacemeError, match="--model-card: .*README.md was not written by replaceme, or was changed"):
        check_owned_file(out, "README.md", kind="pruned-model", option="--model-card")
    with pytest.raises(ReplacemeError, match="not a pruned model written by replaceme"):
        check_owned_file(comparison(tmp_path / "cmp"), "README.md", kind="pruned-model", option="--model-card")
