"""Where a comparison keeps its rows: ``rows/<key>.json``, the manifest and the exports.

The manifest (``manifest.json``) says which comparison the directory holds (its shared
identity, see :func:`replaceme.compare.schedule.shared_identity`) and is the ownership
record of the directory: the exact relative path of every file the comparison writes,
listed *before* the file is written, so that an interrupted run leaves nothing a later
run would take for the user's. A store without a directory keeps nothing.
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
EXPORTS = ("results.csv", "results.md", "results.json", "retained.png", "sweep.png", "distances.csv", "distances.png")


def row_path(key: str) -> str:
    """The relative path of a row's file."""
    return f"rows/{key}.json"


class RowStore:
    """Rows, manifest and exports of one comparison in ``out`` (or nowhere when ``out`` is None)."""

    def __init__(self, out: Path | None):
        self.out = out
        self._owned: list[str] = []

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
        from replaceme.outputs import discard_directory, ordinary_permissions, read_ownership

        out = self.out
        resume = self.check(identity, inputs, overwrite)
        if out.exists() and any(out.iterdir()) and not resume:
            discard_directory(out)
        created = not out.exists()
        (out / "rows").mkdir(parents=True, exist_ok=True)
        if created:
            ordinary_permissions(out)
        owned = set(EXPORTS)
        own = read_ownership(out) if resume else None
        if own is not None:  # files of the same comparison already there stay ours, by exact path
            owned |= {p for p in own.patterns if not _is_pattern(p)}
            from replaceme.outputs import listing

            foreign = set(own.foreign(out))
            owned |= {f for f in listing(out) if f not in foreign and f != own.marker}
        self._owned = sorted(owned)
        self._write_manifest(identity, description)

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
        from replaceme.outputs import write_json_atomic

        self._claim(row_path(row.key))
        write_json_atomic(self.out / row_path(row.key), row.to_dict())

    def export(self, rows: list[Row], provenance: dict[str, Any]) -> list[Path]:
        """Write the table files and plots (nothing without a directory)."""
        return write_exports(rows, self.out, provenance) if self.out is not None else []

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

    def _claim(self, name: str) -> None:
        """List ``name`` in the ownership record before it is written."""
        if name not in self._owned:
            self._owned = sorted({*self._owned, name})
            manifest = self._manifest()
            self._write_manifest(manifest.get("shared_hash"), manifest.get("plan", {}))

    def _write_manifest(self, identity: str | None, description: dict[str, Any]) -> None:
        from replaceme.outputs import literal, ownership_record, write_json_atomic

        write_json_atomic(self.out / MANIFEST, {"shared_hash": identity, "plan": description,
                                                 **ownership_record(KIND, [literal(f) for f in self._owned])})


def _is_pattern(entry: str) -> bool:
    """Whether an ownership entry is a glob pattern (written by an earlier version) rather than a path."""
    from replaceme.outputs import literal

    return literal(entry) != entry
