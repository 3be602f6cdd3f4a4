"""What a comparison has to do, in what order, and the identity (key) of every row.

The table's order is: the baseline, then every method at every budget (budget by
budget), then the included models. The work's order differs: methods first (they
share one calibration pass), then included models, then the baseline, which is
evaluated last and in place (evaluation may cast the model).

A row's key hashes everything that shapes its numbers, including the *content* of
what it reads: the model's weights (:func:`replaceme.model_files.checkpoint_fingerprint`),
every evaluation file and, for pruned rows, the calibration file (size, modification
time and a hash, see :func:`replaceme.provenance.file_fingerprint`). A finished row
is reused on resume only under the same key, so a model or data file changed in
place recomputes the rows it affects and never mixes with rows computed before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from replaceme.compare.external import IncludedModel
from replaceme.compare.plan import ComparePlan
from replaceme.compare.results import BASELINE, Row

#: ``Slot.kind`` values
METHOD, INCLUDED = "method", "included"


@dataclass(frozen=True)
class Slot:
    """One row to compute: its label, layer budget, kind and key."""

    label: str
    layers: int
    kind: str
    key: str


def _digest(value: Any, size: int = 20) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:size]


def shared_identity(plan: ComparePlan) -> str:
    """What every row shares (model, calibration, evaluation, seed, device): a comparison
    in an output directory is resumed only under the same identity. ``offload`` is left
    out (and its disk budget), and so are the statistics' memory settings (budget, passes,
    spill directory, Gram device): they change where the model runs and the statistics
    live, not the rows; so is the healing text (part of healed rows' keys only)."""
    return _digest({k: v for k, v in plan.to_dict().items() if k not in NOT_IN_IDENTITY})


#: plan keys left out of :func:`shared_identity` (per-row keys, and where things run or live)
NOT_IN_IDENTITY = ("methods", "layers", "include", "offload", "disk_budget", "heal_data", "memory_budget",
                   "spill_dir", "gram_device", "stats_passes")


def evaluation_inputs(evaluation: Any) -> dict[str, Any]:
    """The evaluation settings with the content fingerprint of every local file they read:
    each perplexity text (size, mtime and a hash of its head) and every file of ``tasks_dir``."""
    from replaceme.data.texts import TextSource
    from replaceme.provenance import file_fingerprint

    tasks = {}
    if evaluation.tasks_dir and Path(evaluation.tasks_dir).expanduser().is_dir():
        root = Path(evaluation.tasks_dir).expanduser()
        tasks = {p.relative_to(root).as_posix(): file_fingerprint(p) for p in sorted(root.rglob("*")) if p.is_file()}
    return {"spec": evaluation.to_dict(), "ppl": [TextSource(p).describe() for p in evaluation.ppl], "tasks_dir": tasks}


def calibration_inputs(calibration: Any) -> dict[str, Any]:
    """The calibration settings with a hash of the whole content of a local calibration file."""
    from replaceme.provenance import file_fingerprint

    source = calibration.text_source
    content = file_fingerprint(Path(source.base).expanduser(), head=None) if source.is_local else None
    return {"spec": calibration.to_dict(), "content": content}


def included_inputs(entry: IncludedModel) -> dict[str, Any]:
    """An included model's label and path with the fingerprint of every file of its directory."""
    from replaceme.provenance import file_fingerprint

    path = Path(entry.path).expanduser()
    files = {p.name: file_fingerprint(p) for p in sorted(path.iterdir()) if p.is_file()} if path.is_dir() else {}
    return {"included": asdict(entry), "files": files}


def _method_inputs(entry: Any, plan: ComparePlan) -> dict[str, Any]:
    """A method entry (and, for a healed row, the healing text) as part of its row's key;
    a training-free entry keys as it did before healing existed."""
    method = asdict(entry)
    if entry.heal is None:
        method.pop("heal")
        return {"method": method}
    content = None
    source = (plan.heal_data or {}).get("source")
    if source:
        from replaceme.data.texts import TextSource
        from replaceme.provenance import file_fingerprint

        text = TextSource(source)
        content = file_fingerprint(Path(text.base).expanduser(), head=None) if text.is_local else None
    return {"method": method, "heal_data": plan.heal_data, "heal_content": content}


class Schedule:
    """The rows of one comparison, in table order, with their keys.

    Build it with :meth:`build` once the model is loaded (its weights are part of
    every key); then :meth:`pending` says what is left given the finished rows.
    """

    def __init__(self, slots: list[Slot]):
        self.slots = slots

    @classmethod
    def build(cls, plan: ComparePlan, model_fingerprint: str) -> Schedule:
        """Every row of ``plan``; ``model_fingerprint`` identifies the loaded weights."""
        common = {"model": plan.model, "weights": model_fingerprint, "device": plan.device, "dtype": plan.dtype,
                  "evaluation": evaluation_inputs(plan.evaluation)}
        pruned = {**common, "calibration": calibration_inputs(plan.calibration), "seed": plan.seed}
        slots = [Slot(BASELINE, 0, BASELINE, _digest({**common, "row": BASELINE}))]
        for n in plan.layers:
            slots += [Slot(m.label, n, METHOD, _digest({**pruned, **_method_inputs(m, plan), "layers": n}))
                      for m in plan.methods]
        slots += [Slot(e.label, 0, INCLUDED, _digest({**common, **included_inputs(e)})) for e in plan.include]
        return cls(slots)

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.slots]

    def pending(self, done: Mapping[str, Row]) -> list[Slot]:
        """The rows still to compute, in working order (methods, included models, baseline)."""
        left = [s for s in self.slots if s.key not in done]
        return [s for kind in (METHOD, INCLUDED, BASELINE) for s in left if s.kind == kind]

    def table(self, rows: Mapping[str, Row]) -> list[Row]:
        """The finished rows in table order."""
        return [rows[s.key] for s in self.slots if s.key in rows]
