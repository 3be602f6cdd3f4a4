"""What a comparison runs: a plain, JSON-able description (from flags or ``--plan``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from replaceme.calibration import CalibrationSpec
from replaceme.compare.external import IncludedModel
from replaceme.compare.results import BASELINE
from replaceme.errors import ReplacemeError, shown
from replaceme.evaluation.spec import EvalSpec
from replaceme.settings import LoadSettings, MemorySettings


@dataclass
class MethodEntry:
    """One method of a comparison.

    Attributes:
        name: registered method name.
        label: row label (default: the name; must be unique in a plan).
        options: method options (``-o`` keys; ``heal.KEY`` for the healer).
        selector, compensator: stage swaps.
        heal: the healer that trains the pruned model back (None: training-free).
    """

    name: str
    label: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    selector: str | None = None
    compensator: str | None = None
    heal: str | None = None

    def __post_init__(self) -> None:
        self.label = self.label or self.name


@dataclass
class ComparePlan:
    """A whole comparison.

    Attributes:
        model: model directory, hub id, or ``demo``.
        methods: the methods, in table order.
        layers: layer budgets (net layers removed); every method runs at each.
        calibration: the shared calibration set.
        evaluation: the shared evaluation.
        seed: seeds calibration sampling and training.
        device, dtype: where pruning runs (evaluation follows ``evaluation``).
        include: models pruned elsewhere, evaluated as extra rows
            (:mod:`replaceme.compare.external`).
        offload: never hold the whole model (:mod:`replaceme.offload`): the pass, the
            plan scoring and the evaluation run layer by layer, each variant holding
            only its changed layers; the rows equal the in-memory ones.
        disk_budget: with ``offload``, bytes of activations kept on disk between layers
            (None: half the free space; :mod:`replaceme.offload.budget`).
        memory_budget, spill_dir, gram_device, stats_passes: what the shared statistics
            pass may hold in RAM and where the rest goes (:class:`~replaceme.settings.MemorySettings`).
        heal_data: the healing text of healed rows (:class:`replaceme.healer.HealData`
            fields; None: the calibration records the compensation was fit on).
    """

    model: str
    methods: list[MethodEntry]
    layers: list[int]
    calibration: CalibrationSpec
    evaluation: EvalSpec
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    include: list[IncludedModel] = field(default_factory=list)
    offload: bool = False
    disk_budget: int | None = None
    heal_data: dict[str, Any] | None = None
    memory_budget: int | None = None
    spill_dir: str | None = None
    gram_device: str | None = None
    stats_passes: str = "auto"

    def __post_init__(self) -> None:
        labels = [m.label for m in self.methods] + [e.label for e in self.include] + [BASELINE]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ReplacemeError(f"method label(s) used twice: {', '.join(duplicates)} (give each a distinct label)")
        if not self.methods:
            raise ReplacemeError("no methods to compare")
        if not self.layers or any(n < 1 for n in self.layers):
            raise ReplacemeError("--layers needs one or more budgets >= 1, e.g. --layers 1,2")
        if self.evaluation.is_empty:
            raise ReplacemeError("nothing to evaluate: give --ppl and/or --tasks")

    @property
    def loading(self) -> LoadSettings:
        """Where and how the model is loaded (the run settings group shared with ``prune``)."""
        return LoadSettings(device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code)

    @property
    def memory(self) -> MemorySettings:
        """What the run keeps out of memory, and where (the settings group shared with ``prune``)."""
        return MemorySettings(offload=self.offload, disk_budget=self.disk_budget, spill_dir=self.spill_dir,
                              gram_device=self.gram_device, stats_passes=str(self.stats_passes),
                              memory_budget=self.memory_budget)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "methods": [asdict(m) for m in self.methods],
            "layers": self.layers,
            "calibration": self.calibration.to_dict(),
            "evaluation": self.evaluation.to_dict(),
            "seed": self.seed,
            "device": self.device,
            "dtype": self.dtype,
            "include": [asdict(e) for e in self.include],
            "offload": self.offload,
            "disk_budget": self.disk_budget,
            "heal_data": self.heal_data,
            "memory_budget": self.memory_budget,
            "spill_dir": self.spill_dir,
            "gram_device": self.gram_device,
            "stats_passes": str(self.stats_passes),
        }


def with_healers(entries: list[MethodEntry], healers: list[str] | tuple[str, ...]) -> list[MethodEntry]:
    """``entries`` followed, for each healer, by a healed copy of every training-free entry,
    labelled ``LABEL+HEALER`` (``uidl+lora``), so that the table shows both side by side."""
    healed = [MethodEntry(e.name, f"{e.label}+{h}", dict(e.options), e.selector, e.compensator, h)
              for h in healers for e in entries if e.heal is None]
    return list(entries) + healed


def parse_layers(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``."""
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ReplacemeError(f"--layers expects comma-separated integers, got {shown(text)}") from None
    if any(abs(v) > 2**31 - 1 for v in values):
        raise ReplacemeError(f"--layers: {shown(text)} is out of range")
    return values


def read_plan_file(path: str | Path) -> dict[str, Any]:
    """Read a ``--plan`` YAML (``safe_load``): keys mirror the command's options.

    Example::

        model: ./llama
        layers: [4, 8]
        methods:
          - uidl
          - name: replaceme-cosine
            label: cosine-lbfgs
            options: {solver: lbfgs}
        calib: wikitext:wikitext-2-raw-v1
        calib_samples: 256
        ppl: [wikitext:wikitext-2-raw-v1]
        tasks: [boolq, piqa]
        limit: 200
        heal: [lora]            # one healed row per method and healer (or `heal:` in a method entry)
        heal_data: train.txt
    """
    from replaceme.schema import read_yaml_mapping

    from replaceme.schema import check_mapping

    where = str(path)
    data = check_mapping(read_yaml_mapping(path, "plan file"), plan_schema(), where)
    methods = []
    for number, item in enumerate(data.pop("methods", []) or [], 1):
        if isinstance(item, str):
            methods.append(MethodEntry(item))
        elif isinstance(item, dict) and "name" in item:
            entry = check_mapping(item, method_schema(), f"{where}: methods[{number}]")
            methods.append(MethodEntry(**entry))
        else:
            raise ReplacemeError(f"{where}: methods[{number}]: each method is a name or a mapping with 'name'")
    data["methods"] = methods
    if "layers" in data:
        layers = data["layers"]
        data["layers"] = parse_layers(layers) if isinstance(layers, str) else [layers] if isinstance(layers, int) else layers
    if isinstance(data.get("include_models"), str):
        data["include_models"] = [data["include_models"]]
    if isinstance(data.get("heal"), str):
        data["heal"] = [data["heal"]]
    for key in ("ppl", "tasks"):
        if isinstance(data.get(key), str):
            data[key] = [part.strip() for part in data[key].split(",") if part.strip()] if key == "tasks" else [data[key]]
    return data


def plan_schema() -> dict[str, Any]:
    """The type of every top-level key of a ``--plan`` file (unknown keys are errors)."""
    from replaceme.schema import COUNT, SEED, STR, STRS, Key

    return {
        "model": STR, "methods": Key(("list",)), "layers": Key(("int", "list[int]", "str"), minimum=1, maximum=2**31 - 1),
        "calib": STR, "calib_column": STR, "calib_split": STR, "calib_samples": COUNT, "max_length": COUNT,
        "batch_size": COUNT, "seed": SEED, "chat_template": Key(("str",), choices=("auto", "on", "off")),
        "ppl": STRS, "context_length": Key(("int",), minimum=2, maximum=2**31 - 1), "stride": COUNT,
        "max_ppl_tokens": COUNT, "tasks": STRS, "tasks_dir": STR, "task_data": STR,
        "num_fewshot": Key(("int",), minimum=0, maximum=2**31 - 1), "limit": Key(("int", "float"), minimum=0, maximum=2**31 - 1),
        "eval_batch_size": COUNT, "bootstrap_iters": Key(("int",), minimum=0, maximum=2**31 - 1), "output": STR,
        "device": STR, "include_models": Key(("str", "list")),
        "dtype": Key(("str",), choices=("auto", "float32", "bfloat16", "float16")), "offload": Key(("bool",)),
        "disk_budget": Key(("str", "int")), "memory_budget": Key(("str", "int"), minimum=1),
        "spill_dir": STR, "gram_device": STR,
        "stats_passes": Key(("str", "int"), minimum=1, maximum=2, choices=("auto", "1", "2")),
        "heal": STRS, "heal_data": STR, "heal_column": STR, "heal_split": STR, "heal_samples": COUNT,
    }


def method_schema() -> dict[str, Any]:
    """The keys of one method entry of a ``--plan`` file."""
    from replaceme.schema import STR, Key

    return {"name": STR, "label": STR, "options": Key(("mapping",)), "selector": STR, "compensator": STR, "heal": STR}
