"""Peak memory of ``evaluate``, ``distances`` and ``compare``: in memory vs ``--offload``.

Every command runs as the real CLI in a fresh process; its peak RSS (``ru_maxrss`` of
that child) minus the same command on a tiny model (hidden 64, 6 layers: the
interpreter, torch, transformers and lm-eval imports) is divided by the size of the
model's weights ("× model"). Random-weight Llamas with Llama-3 proportions
(``calibration_cost.small_shape``), float32, saved as safetensors with the demo's
word-level tokenizer, its calibration and its validation text (shipped in the
package). ``compare`` runs with 1, 2 or 4 methods (``--methods``) and ``--output``,
whose ``results.json`` gives the statistics memory (Gram sums and activation sample);
the rows (blocks and perplexity of every method) of the in-memory and the offloaded
run are compared.

Every measured cell is appended to ``--log`` (JSON lines) at once; a cell already in
the log is not measured again, and the table is built from every cell of the log, so
one log can be filled by several runs in order of priority. ``--model-dir`` keeps the
random models between runs (checked against the expected shape).

    python benchmarks/engine_memory.py --threads 1                       # 0.2B, both calibrations, 4 methods
    python benchmarks/engine_memory.py --sizes 0.5b,1b --commands compare --methods 1,2,4 --calib 64x128 \\
        --modes offload --threads 1 --model-dir /tmp/models --log /tmp/cells.jsonl
    python benchmarks/engine_memory.py --commands compare --modes offload --quick
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, Report
from calibration_cost import save_random_llama, small_shape

DEMO = ROOT / "replaceme" / "demo" / "weights"
#: name -> (hidden, layers, vocab)
SIZES = {"tiny": (64, 6, 185), "30m": (256, 8, 32000), "0.2b": (1024, 16, 32000), "0.5b": (1536, 13, 32000),
         "1b": (2048, 16, 32000)}
#: number of methods -> the methods compare runs (each set extends the previous one)
METHOD_SETS = {1: ["replaceme-lstsq"], 2: ["replaceme-lstsq", "uidl"],
               4: ["replaceme-lstsq", "uidl", "replaceme-cosine", "llm-streamline"]}
COMMANDS = ("evaluate", "distances", "compare")
MB = 2**20


def command_args(command: str, model: Path, samples: int, length: int, layers: int, methods: int = 4,
                 out: Path | None = None) -> list[str]:
    """The CLI arguments of one measured command (without ``--offload``)."""
    calib = ["--calib", str(DEMO / "calibration.txt"), "--calib-samples", str(samples), "--max-length", str(length),
             "--batch-size", "4", "--no-cache"]
    ppl = ["--ppl", str(DEMO / "validation.txt"), "--max-ppl-tokens", "4096", "--context-length", "128"]
    if command == "evaluate":
        return ["evaluate", str(model), *ppl, "--json"]
    if command == "distances":
        return ["distances", str(model), "-n", str(layers), *calib, "--json"]
    chosen = [a for m in METHOD_SETS[methods] for a in ("-m", m)]
    return ["compare", str(model), *chosen, "-n", str(layers), *calib, *ppl, "--json",
            *(["--output", str(out)] if out else [])]


def measure(args: list[str], threads: int) -> tuple[int, float, str]:
    """Run ``replaceme ARGS`` in a fresh intermediate process: the child's peak RSS, wall time and stdout."""
    command = [str(Path(sys.executable).parent / "replaceme"), *args]
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        f"r = subprocess.run({command!r}, capture_output=True, text=True)\n"
        "if r.returncode: sys.exit(r.stdout[-2000:] + r.stderr[-4000:])\n"
        "sys.stderr.write(r.stdout)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, time.perf_counter() - t)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "REPLACEME_NO_PROGRESS": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"replaceme {' '.join(args)} failed:\n{out.stderr[-5000:]}")
    peak, seconds = out.stdout.split()
    return int(peak), float(seconds), out.stderr


def rows_of(command: str, stdout: str) -> list:
    """What must be equal between the two modes: compare's rows, evaluate's metrics, distances' table."""
    data = json.loads(stdout[stdout.index("[" if command != "evaluate" else "{"):])
    if command == "compare":
        return [[r["method"], r["blocks"], round(next(v for k, v in r.items() if k.startswith("ppl")), 6)] for r in data]
    if command == "evaluate":
        return sorted([k, round(v, 6)] for k, v in data["metrics"].items())
    return [[round(v, 6) if isinstance(v, float) else v for v in r.values()] for r in data]


def weight_bytes(path: Path) -> int:
    """Bytes of every tensor in the checkpoint's safetensors files (from their headers)."""
    total = 0
    for file in path.glob("*.safetensors"):
        with open(file, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        total += sum(t["data_offsets"][1] - t["data_offsets"][0] for k, t in header.items() if k != "__metadata__")
    return total


def model_at(root: Path, size: str, seed: int) -> Path:
    """The random model ``size`` under ``root``: made once, then reused if its config has the expected shape."""
    path, shape = root / size, small_shape(*SIZES[size])
    if not (path / "config.json").exists():
        save_random_llama(path, *SIZES[size], seed)
    config = json.loads((path / "config.json").read_text())
    found = [config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"], config["vocab_size"]]
    if found != [shape["hidden"], shape["layers"], shape["intermediate"], shape["vocab"]]:
        sys.exit(f"{path} has shape {found}, not {size}'s; use another --model-dir")
    return path


def commit_measured() -> str:
    """The commit of the checkout whose ``replaceme`` runs (the venv's parent), ``+dirty`` if its code changed."""
    checkout = Path(sys.prefix).parent
    git = ["git", "-C", str(checkout)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "replaceme", "plugins"],
                           capture_output=True, text=True).stdout.strip()
    return (head or "?") + ("+dirty" if dirty else "")


def statistics_of(out: Path) -> dict:
    """compare's statistics memory (Gram sums, activation sample) from its results.json provenance."""
    stats = json.loads((out / "results.json").read_text())["provenance"].get("statistics") or {}
    return stats.get("memory_bytes") or {}


def run_cell(cell: dict, model: Path, scratch: Path, threads: int) -> dict:
    """Measure one cell (``command``, ``calib``, ``methods``, ``mode``) on ``model``."""
    out = scratch / f"out-{time.time_ns()}" if cell["command"] == "compare" else None
    samples, length = (0, 0) if cell["calib"] == "-" else (int(x) for x in cell["calib"].split("x"))
    args = command_args(cell["command"], model, samples, length, cell["n"], cell["methods"] or 4, out)
    args += ["--offload"] if cell["mode"] == "offload" else []
    load, started = list(os.getloadavg()), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    peak, seconds, stdout = measure(args, threads)
    result = {**cell, "peak": peak, "seconds": round(seconds, 1), "rows": rows_of(cell["command"], stdout),
              "started": started, "load": [round(x, 1) for x in (*load, os.getloadavg()[0])],
              "commit": commit_measured(), "command_line": "replaceme " + " ".join(args)}
    if out is not None:
        result["statistics"] = statistics_of(out)
        result["row_peaks"] = {r["method"]: round(r["peak RSS MB"]) for r in json.loads(stdout[stdout.index("["):])}
        shutil.rmtree(out, ignore_errors=True)
    return result


def public(cell: dict, models: Path) -> dict:
    """``cell`` with this checkout, the model directory and compare's output directory as ``.``, ``MODELS``, ``OUT``."""
    line = cell["command_line"].replace(str(ROOT), ".").replace(str(models), "MODELS")
    return {**cell, "command_line": re.sub(r"\S*/replaceme-engine-bench-[^/\s]+/out-\d+", "OUT", line)}


def key_of(cell: dict) -> tuple:
    return cell["size"], cell["command"], cell["calib"], cell["methods"], cell["n"], cell["mode"]


def table_rows(cells: list[dict]) -> list[list]:
    """One row per measured cell (not the tiny runs), in size, command, methods, mode order."""
    done = {key_of(c): c for c in cells}
    order = {name: i for i, name in enumerate([*SIZES, *COMMANDS, "memory", "offload"])}
    rows = []
    for c in sorted((c for c in cells if c["size"] != "tiny"),
                    key=lambda c: (order[c["size"]], order[c["command"]], c["calib"], c["methods"] or 0, c["n"],
                                   order[c["mode"]])):
        floor = done.get(key_of({**c, "size": "tiny"}))
        above = None if floor is None else c["peak"] - floor["peak"]
        other = done.get(key_of({**c, "mode": "memory"}))
        same = "" if c["mode"] == "memory" or other is None else ("yes" if other["rows"] == c["rows"] else "NO")
        stats = c.get("statistics") or {}
        peak_row = max(c["row_peaks"], key=c["row_peaks"].get) if c.get("row_peaks") else "-"
        rows.append([c["size"], c["command"], c["calib"], c["methods"] or "-", c["mode"], round(c["peak"] / MB),
                     "?" if floor is None else round(floor["peak"] / MB),
                     "?" if above is None else round(above / MB),
                     "?" if above is None else round(above / c["weights"], 3),
                     round(stats["gram"] / MB, 1) if stats else "-", round(stats["sample"] / MB, 1) if stats else "-",
                     peak_row, round(c["seconds"]), f"{c['load'][0]:.1f}→{c['load'][-1]:.1f}", c["commit"], same])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="0.2b", help="comma-separated: " + ", ".join(s for s in SIZES if s != "tiny"))
    p.add_argument("--commands", default=",".join(COMMANDS))
    p.add_argument("--methods", default="4", help="compare's method counts, comma-separated: 1, 2, 4")
    p.add_argument("--modes", default="memory,offload")
    p.add_argument("--calib", default="16x64,64x128", help="calibrations SAMPLESxLENGTH, comma-separated")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", type=Path, help="keep the random models here between runs (default: temporary)")
    p.add_argument("--log", type=Path, help="JSON lines of measured cells: appended to, skipped when already there")
    p.add_argument("--quick", action="store_true", help="the 30M model, small calibration only")
    args = p.parse_args()
    sizes = ["30m"] if args.quick else args.sizes.split(",")
    calibs = ["16x64"] if args.quick else args.calib.split(",")
    report = Report("engine_memory", args.quick, {k: str(v) for k, v in vars(args).items()})
    scratch = Path(tempfile.mkdtemp(prefix="replaceme-engine-bench-"))
    models = args.model_dir or scratch / "models"
    cells = [json.loads(line) for line in args.log.read_text().splitlines()] if args.log and args.log.exists() else []
    try:
        for size in sizes:
            for command in args.commands.split(","):
                counts = [int(m) for m in args.methods.split(",")] if command == "compare" else [None]
                for calib in (calibs if command != "evaluate" else ["-"]):
                    for methods in counts:
                        for mode in args.modes.split(","):
                            for name in ("tiny", size):
                                cell = {"size": name, "command": command, "calib": calib, "methods": methods,
                                        "n": args.layers, "mode": mode}
                                if any(key_of(c) == key_of(cell) for c in cells):
                                    continue
                                model = model_at(models, name, args.seed)
                                cells.append(run_cell({**cell, "weights": weight_bytes(model)}, model, scratch,
                                                      args.threads))
                                print(json.dumps({k: v for k, v in cells[-1].items() if k != "rows"}), flush=True)
                                if args.log:
                                    with open(args.log, "a") as f:
                                        f.write(json.dumps(cells[-1]) + "\n")
        shown = [public(c, models) for c in cells if c["size"] in SIZES]
        report.table(
            "Peak RSS above a tiny run: evaluate, distances and compare, in memory vs --offload",
            ["model", "command", "calibration", "methods", "mode", "peak MB", "tiny MB", "ΔRSS MB", "× model",
             "Gram MB", "sample MB", "peak row", "s", "load", "commit", "same rows"],
            table_rows(shown),
            caption=f"-n {args.layers}; compare with 1 method: {METHOD_SETS[1][0]}, 2: + {METHOD_SETS[2][1]}, 4: + "
                    f"{', '.join(METHOD_SETS[4][2:])}; perplexity on 4096 validation tokens in windows of 128; "
                    "tiny MB = the same command on the tiny model; × model = ΔRSS / weight bytes (float32); Gram/sample "
                    "MB = compare's statistics memory (results.json provenance); peak row = compare's row with the "
                    "highest peak RSS; load = load average (1 min) before → after; same rows = the in-memory and the "
                    "offloaded run print the same rows (blocks, perplexity to 6 digits).",
        )
        sizes_seen = {c["size"]: c["weights"] for c in shown}
        report.save({"sizes": {s: {"shape": small_shape(*SIZES[s]), "weight_bytes": w} for s, w in sizes_seen.items()},
                     "cells": shown})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
