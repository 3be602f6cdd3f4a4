"""Peak memory of ``replaceme prune`` against model size: in memory vs ``--offload``.

Random-weight Llamas with Llama-3 proportions (see ``calibration_cost.small_shape``),
float32, saved as safetensors; the demo's word-level tokenizer and its calibration
text (shipped in the package, so no shared data is needed). Each prune runs as
the real CLI in a fresh process; its peak RSS (``ru_maxrss`` of that child) is
compared with the same command on a tiny model ("above a tiny run" removes the
interpreter, torch and transformers, ~0.4-0.5 GB), and divided by the size of the
model's weights. The two outputs are compared tensor by tensor (max relative
difference of the Frobenius norm).

    python benchmarks/offload_memory.py                  # 0.2B, 0.2B (128k vocab), 0.5B, 1B
    python benchmarks/offload_memory.py --quick          # tiny + 0.2B only
    python benchmarks/offload_memory.py --sizes 0.2b --method replaceme-cosine
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, Report
from calibration_cost import save_random_llama

DEMO = ROOT / "replaceme" / "demo" / "weights"
#: name -> (hidden, layers, vocab); parameters counted by the script
SIZES = {
    "tiny": (64, 4, 185),
    "0.2b": (1024, 10, 32000),
    "0.2b-128k": (512, 16, 128256),
    "0.5b": (1536, 13, 32000),
    "1b": (2048, 16, 32000),
}


def make_model(name: str, root: Path, seed: int) -> tuple[Path, int]:
    path = root / name
    return path, save_random_llama(path, *SIZES[name], seed)


def peak_rss_of(command: list[str]) -> tuple[int, float]:
    """Run ``command`` in a fresh intermediate process; its child's peak RSS (bytes) and wall time."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        f"r = subprocess.run({command!r}, capture_output=True, text=True)\n"
        "if r.returncode: sys.exit(r.stdout[-2000:] + r.stderr[-4000:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, time.perf_counter() - t)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    peak, seconds = out.stdout.split()
    return int(peak), float(seconds)


def max_relative_difference(a: Path, b: Path) -> float:
    import torch

    from replaceme.checkpoint import Checkpoint

    ca, cb = Checkpoint(a), Checkpoint(b)
    assert sorted(ca.names()) == sorted(cb.names())
    worst = 0.0
    for name in ca.names():
        x, y = ca.read_range(name).double(), cb.read_range(name).double()
        worst = max(worst, float((x - y).norm() / x.norm().clamp_min(1e-30)))
        del x, y
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="0.2b,0.2b-128k,0.5b,1b", help=f"comma list of {', '.join(SIZES)}")
    p.add_argument("--method", default="replaceme-lstsq")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="only 0.2b")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    sizes = ["0.2b"] if args.quick else args.sizes.split(",")
    report = Report("offload_memory", args.quick, vars(args))
    exe = str(Path(sys.executable).with_name("replaceme"))
    root = Path(tempfile.mkdtemp(prefix="replaceme-offload-bench-"))
    rows = []
    try:
        def prune(model: Path, out: str, offload: bool) -> tuple[int, float]:
            cmd = [exe, "prune", str(model), "-m", args.method, "-n", str(args.layers), "--calib", str(DEMO / "calibration.txt"),
                   "--calib-samples", str(args.calib_samples), "--max-length", str(args.max_length), "--batch-size", "4",
                   "--no-cache", "--output", str(root / out), "--overwrite"] + (["--offload"] if offload else [])
            return peak_rss_of(cmd)

        tiny, _ = make_model("tiny", root, args.seed)
        base = {off: prune(tiny, f"tiny-{off}", off)[0] for off in (False, True)}
        for name in sizes:
            path, size = make_model(name, root, args.seed)
            hidden, layers, vocab = SIZES[name]
            result = {}
            for off in (False, True):
                peak, seconds = prune(path, f"{name}-{off}", off)
                result[off] = (peak, seconds, peak - base[off])
            diff = max_relative_difference(root / f"{name}-False", root / f"{name}-True")
            params = size // 4
            rows.append([name, hidden, layers, vocab, round(params / 1e6, 1), round(size / 2**20),
                         round(result[False][2] / 2**20), round(result[False][2] / size, 3), round(result[False][1], 1),
                         round(result[True][2] / 2**20), round(result[True][2] / size, 3), round(result[True][1], 1),
                         f"{diff:.2e}"])
            shutil.rmtree(path)
            for off in (False, True):
                shutil.rmtree(root / f"{name}-{off}", ignore_errors=True)
            print(rows[-1], flush=True)
        report.table(
            f"prune -m {args.method} -n {args.layers}: peak RSS above a tiny run, in memory vs --offload "
            f"({args.calib_samples} × ≤{args.max_length} tokens, float32, CPU)",
            ["model", "hidden", "layers", "vocab", "params M", "weights MB", "in-memory ΔRSS MB", "in-memory ×model",
             "in-memory s", "offload ΔRSS MB", "offload ×model", "offload s", "max rel diff"],
            rows,
            caption=f"ΔRSS = peak RSS of the CLI process minus that of the same command on a tiny model "
                    f"({base[False] / 2**20:.0f} MB in memory, {base[True] / 2**20:.0f} MB offload); ×model = ΔRSS / weight bytes; "
                    "max rel diff = max over tensors of ‖a − b‖/‖a‖ between the two outputs.",
        )
        report.save({"tiny_peak_rss": base, "time": time.time()})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    json.dumps(rows)


if __name__ == "__main__":
    main()
