"""Peak memory of ``evaluate``, ``distances`` and ``compare``: in memory vs ``--offload``.

Every command runs as the real CLI in a fresh process; its peak RSS (``ru_maxrss`` of
that child) minus the same command on a tiny model (hidden 64, 6 layers: the
interpreter, torch, transformers and lm-eval imports) is divided by the size of the
model's weights ("× model"). Random-weight Llamas with Llama-3 proportions
(``calibration_cost.small_shape``), float32, saved as safetensors with the demo's
word-level tokenizer, its calibration and its validation text (shipped in the
package). For ``compare`` the rows (blocks and perplexity of every method) of the
in-memory and the offloaded run are compared.

    python benchmarks/engine_memory.py --threads 1                       # 0.2B, both calibrations
    python benchmarks/engine_memory.py --sizes 0.2b,0.5b --calib 64x128 --threads 1
    python benchmarks/engine_memory.py --commands compare --modes offload --quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, Report
from calibration_cost import save_random_llama

DEMO = ROOT / "replaceme" / "demo" / "weights"
#: name -> (hidden, layers, vocab)
SIZES = {"tiny": (64, 6, 185), "30m": (256, 8, 32000), "0.2b": (1024, 16, 32000), "0.5b": (1536, 13, 32000),
         "1b": (2048, 16, 32000)}
METHODS = ["uidl", "replaceme-lstsq", "replaceme-cosine", "llm-streamline"]
COMMANDS = ("evaluate", "distances", "compare")


def command_args(command: str, model: Path, samples: int, length: int, layers: int) -> list[str]:
    """The CLI arguments of one measured command (without ``--offload``)."""
    calib = ["--calib", str(DEMO / "calibration.txt"), "--calib-samples", str(samples), "--max-length", str(length),
             "--batch-size", "4", "--no-cache"]
    ppl = ["--ppl", str(DEMO / "validation.txt"), "--max-ppl-tokens", "4096", "--context-length", "128"]
    if command == "evaluate":
        return ["evaluate", str(model), *ppl, "--json"]
    if command == "distances":
        return ["distances", str(model), "-n", str(layers), *calib, "--json"]
    methods = [a for m in METHODS for a in ("-m", m)]
    return ["compare", str(model), *methods, "-n", str(layers), *calib, *ppl, "--json"]


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


def rows_of(command: str, stdout: str) -> list[tuple]:
    """What must be equal between the two modes: compare's rows, evaluate's metrics, distances' table."""
    data = json.loads(stdout[stdout.index("[" if command != "evaluate" else "{"):])
    if command == "compare":
        return [(r["method"], r["blocks"], round(next(v for k, v in r.items() if k.startswith("ppl")), 6)) for r in data]
    if command == "evaluate":
        return sorted((k, round(v, 6)) for k, v in data["metrics"].items())
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in r.values()) for r in data]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="0.2b", help="comma-separated: " + ", ".join(s for s in SIZES if s != "tiny"))
    p.add_argument("--commands", default=",".join(COMMANDS))
    p.add_argument("--modes", default="memory,offload")
    p.add_argument("--calib", default="16x64,64x128", help="calibrations SAMPLESxLENGTH, comma-separated")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="the 30M model, small calibration only")
    args = p.parse_args()
    sizes = ["30m"] if args.quick else args.sizes.split(",")
    calibs = [tuple(int(x) for x in c.split("x")) for c in (["16x64"] if args.quick else args.calib.split(","))]
    report = Report("engine_memory", args.quick, vars(args))
    root = Path(tempfile.mkdtemp(prefix="replaceme-engine-bench-"))
    rows = []
    try:
        tiny = root / "tiny"
        save_random_llama(tiny, *SIZES["tiny"], args.seed)
        floors: dict[tuple, int] = {}
        for size in sizes:
            path = root / size
            weights = save_random_llama(path, *SIZES[size], args.seed)
            for command in args.commands.split(","):
                for samples, length in (calibs if command != "evaluate" else calibs[:1]):
                    seen = {}
                    for mode in args.modes.split(","):
                        extra = ["--offload"] if mode == "offload" else []
                        key = (command, samples, length, mode)
                        if key not in floors:
                            floors[key] = measure(command_args(command, tiny, samples, length, args.layers) + extra,
                                                  args.threads)[0]
                        peak, seconds, stdout = measure(command_args(command, path, samples, length, args.layers) + extra,
                                                        args.threads)
                        seen[mode] = rows_of(command, stdout)
                        above = peak - floors[key]
                        calib = "-" if command == "evaluate" else f"{samples}×{length}"
                        rows.append([size, command, calib, mode, round(peak / 2**20), round(above / 2**20),
                                     round(above / weights, 3), round(seconds)])
                        print(*rows[-1], flush=True)
                    if len(seen) == 2:
                        rows[-1].append("yes" if seen["memory"] == seen["offload"] else "NO")
                        rows[-2].append("")
                    time.sleep(0)
            shutil.rmtree(path, ignore_errors=True)
        for row in rows:
            row += [""] * (9 - len(row))
        report.table(
            "Peak RSS above a tiny run: evaluate, distances and compare (4 methods), in memory vs --offload",
            ["model", "command", "calibration", "mode", "peak MB", "ΔRSS MB", "× model", "s", "same rows"],
            rows,
            caption=f"-n {args.layers}; compare: {', '.join(METHODS)}; perplexity on 4096 validation tokens in "
                    "windows of 128; × model = ΔRSS / weight bytes (float32); same rows = the in-memory and the "
                    "offloaded run print the same rows (blocks, perplexity to 6 digits).",
        )
        report.save({"sizes": {s: SIZES[s] for s in sizes}})
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
