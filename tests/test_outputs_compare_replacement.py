"""compare --overwrite keeps the comparison it replaces, whole, until the new one is
complete: a run that dies half-way leaves both, and a later run that completes the
new comparison deletes the old one."""

from __future__ import annotations

import os

import pytest

from replaceme.compare.results import Row
from replaceme.compare.store import RowStore
from replaceme.outputs import check_output, clean_stale, output_lock, read_ownership


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name != ".replaceme-record.json")


def _comparison(out, identity, key):
    store = RowStore(out)
    store.open(identity, {"model": identity}, [], overwrite=True)
    store.save(Row(label="uidl", method="uidl", layers=1, key=key))
    return store


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_an_interrupted_replacement_keeps_the_previous_comparison(tmp_path):
    out = tmp_path / "cmp"
    _comparison(out, "first", "old-row").finish()
    old = _tree(out)
    pid = os.fork()
    if pid == 0:  # a run replacing it, killed before it completes
        try:
            _comparison(out, "second", "new-row")
        finally:
            os._exit(137)
    os.waitpid(pid, 0)
    backups = [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
    assert len(backups) == 1 and _tree(backups[0]) == old
    assert read_ownership(out).replacing == backups[0].name
    # the next run checks and tidies: the previous comparison is kept
    check_output(out, overwrite=True, allow_existing=True, owner_kind="comparison")
    with output_lock(out):
        clean_stale(out)
    assert backups[0].exists()
    # a run that completes the new comparison deletes it
    store = RowStore(out)
    assert store.check("second", [], overwrite=False)  # the same comparison: resumed
    store.open("second", {"model": "second"}, [], overwrite=False)
    store.finish()
    assert not backups[0].exists() and read_ownership(out).replacing is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]
