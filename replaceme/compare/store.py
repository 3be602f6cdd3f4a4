"""Where a comparison keeps its rows: ``rows/<key>.json``, the manifest and the exports.

The manifest (``manifest.json``) says which comparison the directory holds (its shared
identity, see :func:`replaceme.compare.schedule.shared_identity`). The directory's
ownership record (:mod:`replaceme.outputs.ownership`) lists the exact relative path of
every file the comparison writes, with its size and SHA-256: listed as pending *before*
the file is written and recorded by content after, so that an interrupted run leaves
nothing a later run would take for the user's, and a file the user adds or edits is
never replaced. A store without a directory keeps nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from replaceme.compare.results import Row, write_exports
from replaceme.errors import ReplacemeError

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
#: the kind of output in the ownership record (a pruned model is not replaced by a comparison)
KIND = "comparison"
#: the exports a comparison may write beside its rows (exact names: extend it when compare writes something new)
EXPORTS = ("results.csv", "results.md", "results.json", "retained.png", "sweep.png")


def row_path(key: str) -> str:
    """The relative path of a row's file."""
    return f"rows/{key}.json"


class RowStore:
    """Rows, manifest and exports of one comparison in ``out`` (or nowhere when ``out`` is None)."""

    def __init__(self, out: Path | None):
        self.out = Path(out).expanduser() if out is not None else None

    def check(self, identity: str, inputs: Iterable[Any], overwrite: bool) -> bool:
        """Before any work: may the directory hold this comparison? Returns True to resume it.

        An existing directory is resumed when it holds a comparison of the same identity;
        another replaceme comparison needs ``overwrite``; anything replaceme did not write
        is refused (see :func:`replaceme.outputs.check_output`). Nothing is created.
        """
        if self.out is None:
            return False
        from replaceme.outputs import check_output

        status = check_output(self.out, inputs=inputs, overwrite=overwrite, allow_existing=True, owner_kind=KIND)
        if not status.exists or status.empty:
            return False
        same = self._manifest().get("shared_hash") == identity
        if not same and not overwrite:
            raise ReplacemeError(f"output directory {self.out} holds other results (use --overwrite to replace them)")
        return same

    def open(self, identity: str, description: dict[str, Any], inputs: Iterable[Any], overwrite: bool) -> None:
        """Create the directory, or resume (or extend) the same comparison in it; another
        comparison there is replaced only with ``overwrite``."""
        if self.out is None:
            return
        from replaceme.outputs import mark_replacing, ordinary_permissions, recording, set_aside, write_json_atomic

        out = self.out
        resume = self.check(identity, inputs, overwrite)
        # another comparison there is kept aside, whole, until this one is complete (see finish)
        backup = set_aside(out) if out.exists() and any(out.iterdir()) and not resume else None
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        if backup is not None:
            mark_replacing(out, backup, KIND)
        (out / "rows").mkdir(exist_ok=True)
        if created:
            ordinary_permissions(out)
        with recording(out, out / MANIFEST, kind=KIND):
            write_json_atomic(out / MANIFEST, {"shared_hash": identity, "plan": description})

    def finished(self, keys: Iterable[str]) -> dict[str, Row]:
        """Rows of ``keys`` saved by an earlier run (a failed row is not finished: it is retried)."""
        rows = {}
        for key in keys:
            row = self._load(key)
            if row is not None and not row.error:
                rows[key] = row
        if rows:
            log.info("resuming: %d row(s) already done", len(rows))
        return rows

    def save(self, row: Row) -> None:
        """Save one finished (or failed) row at once."""
        if self.out is None:
            return
        from replaceme.outputs import recording, write_json_atomic

        path = self.out / row_path(row.key)
        with recording(self.out, path):
            write_json_atomic(path, row.to_dict())

    def export(self, rows: list[Row], provenance: dict[str, Any]) -> list[Path]:
        """Write the table files and plots (nothing without a directory)."""
        if self.out is None:
            return []
        from replaceme.outputs import recording

        with recording(self.out, *(self.out / name for name in EXPORTS)):
            return write_exports(rows, self.out, provenance)

    def finish(self) -> None:
        """The comparison is complete: delete the one it replaced (kept aside until now)."""
        if self.out is not None:
            from replaceme.outputs import finish_replacement

            finish_replacement(self.out)

    def _load(self, key: str) -> Row | None:
        if self.out is None:
            return None
        path = self.out / row_path(key)
        if not path.exists():
            return None
        try:
            return Row.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            log.warning("ignoring unreadable row %s: %s", path, exc)
            return None

    def _manifest(self) -> dict[str, Any]:
        try:
            data = json.loads((self.out / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
