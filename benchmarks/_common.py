"""Helpers shared by the benchmark scripts (not a library module; not imported by replaceme).

- where the shared models/data live (``$REPLACEME_SHARED`` or ``<repo>/../shared``),
- what machine a result was measured on, and how loaded it was (load average
  before and after, since the machines these run on are shared),
- tables: printed with rich, saved as JSON and Markdown under ``benchmarks/results/``,
- fresh-process workers, so that peak-RSS deltas of different configurations do
  not contaminate each other (the allocator keeps freed pages).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Before torch starts OpenMP: on a shared, oversubscribed CPU the default (spinning)
# wait policy makes every parallel region wait for a descheduled thread, which slowed
# a tiny forward pass 50x here (0.79 s instead of 0.015 s) when another process
# held one of the two cores. Sleeping waits keep the timings about the work.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def shared_dir() -> Path | None:
    """``$REPLACEME_SHARED`` or ``<repo>/../shared``, if that directory exists."""
    path = Path(os.environ.get("REPLACEME_SHARED", ROOT.parent / "shared")).expanduser().resolve()
    return path if path.is_dir() else None


def require_shared(*parts: str) -> Path:
    """The shared path ``parts`` (e.g. ``"models", "stories260K"``); exit 0 with a reason if absent."""
    base = shared_dir()
    if base is None:
        tried = os.environ.get("REPLACEME_SHARED", str(ROOT.parent / "shared"))
        print(f"SKIP: no shared directory at {tried} (set REPLACEME_SHARED)")
        sys.exit(0)
    path = base.joinpath(*parts)
    if not path.exists():
        print(f"SKIP: {path} is missing")
        sys.exit(0)
    return path


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, torch version and threads, GPU if any."""
    import psutil
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def describe_machine(info: dict[str, Any], load_before: list[float], load_after: list[float]) -> str:
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    return (
        f"{info['cpu']}, {info['logical_cores']} logical cores, {info['ram_gib']} GiB RAM{gpu}; "
        f"torch {info['torch']} with {info['torch_threads']} threads (OMP_WAIT_POLICY={info.get('omp_wait_policy')}); "
        f"load average (1/5/15 min) before {load_before}, after {load_after}"
    )


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: the library's formatting, with benchmark-specific float precision."""
    from replaceme.console import format_cell

    if not isinstance(value, float) or value != value or value == 0:
        return format_cell(value)
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.{digits - 1}e}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


def print_table(title: str, columns: list[str], rows: list[list[Any]], caption: str | None = None) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text
        print(title)
        print(markdown_table(columns, rows))
        if caption:
            print(caption)
        return
    table = Table(title=title, caption=caption)
    for c in columns:
        table.add_column(c, overflow="fold")
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    Console(width=max(120, len(columns) * 14)).print(table)


class Report:
    """Collects the tables of one benchmark run and writes ``results/<name>[-quick].{json,md}``."""

    def __init__(self, name: str, quick: bool, args: dict[str, Any]):
        self.name = name + ("-quick" if quick else "")
        self.command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
        self.args = args
        self.tables: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.load_before = load_average()
        self.started = time.time()

    def table(self, title: str, columns: list[str], rows: list[list[Any]], caption: str | None = None) -> None:
        print_table(title, columns, rows, caption)
        self.tables.append({"title": title, "columns": columns, "rows": rows, "caption": caption})

    def note(self, text: str) -> None:
        print(text)
        self.notes.append(text)

    def save(self, extra: dict[str, Any] | None = None) -> Path:
        info = machine_info()
        load_after = load_average()
        machine = describe_machine(info, self.load_before, load_after)
        payload = {
            "benchmark": self.name,
            "command": self.command,
            "args": self.args,
            "machine": info,
            "machine_text": machine,
            "load_average_before": self.load_before,
            "load_average_after": load_after,
            "wall_seconds": round(time.time() - self.started, 1),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "tables": self.tables,
            "notes": self.notes,
            **(extra or {}),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        json_path = RESULTS / f"{self.name}.json"
        json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        md = [f"# {self.name}", "", f"Command: `{self.command}`", "", f"Machine: {machine}.",
              f"Run: {payload['date']}, {payload['wall_seconds']} s wall.", ""]
        for t in self.tables:
            md += [f"## {t['title']}", "", markdown_table(t["columns"], t["rows"]), ""]
            if t["caption"]:
                md += [t["caption"], ""]
        if self.notes:
            md += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        (RESULTS / f"{self.name}.md").write_text("\n".join(md))
        print(f"\nmachine: {machine}")
        print(f"wall: {payload['wall_seconds']} s; saved {json_path.relative_to(ROOT)} and .md")
        return json_path


def run_worker(script: Path, job: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run ``script --worker <json>`` in a fresh interpreter; it prints one ``RESULT {json}`` line."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.run(
        [sys.executable, str(script), "--worker", json.dumps(job)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker failed (rc {proc.returncode}) for {job}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def emit(result: dict[str, Any]) -> None:
    """Worker side of :func:`run_worker`."""
    print("RESULT " + json.dumps(result, default=str), flush=True)


def parse_or_work(parser: Any, worker: Any) -> Any:
    """Add ``--threads``/``--seed``/``--worker`` and parse; in a worker process
    (``--worker <json>``), run ``worker(job)``, emit its result and return None."""
    import argparse

    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        emit(worker(json.loads(args.worker)))
        return None
    return args


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def quiet() -> None:
    """Silence transformers/replaceme progress output inside workers."""
    import logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
