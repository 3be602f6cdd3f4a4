"""``replaceme prune`` in one process vs two under ``torchrun`` (gloo, CPU): time and output.

A random-weight Llama with Llama-3 proportions (``compare_memory.SIZES``) and the demo's
tokenizer and calibration text. Three runs of the same CLI command, each timed from
outside (wall clock, including start-up and loading):

- 1 process, 1 thread;
- 1 process, 2 threads (the whole machine for one process);
- ``torchrun --nproc_per_node 2 --no-python replaceme prune ...``, 1 thread each.

The outputs are compared tensor by tensor: max over tensors of ``max|a − b| / max|a|``
between the single-process weights and the two-process ones.

    python benchmarks/distributed.py                     # 0.2B, replaceme-lstsq, 64 × 128 tokens
    python benchmarks/distributed.py --quick             # the 30M model
    python benchmarks/distributed.py --method llm-streamline
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from compare_memory import DEMO, SIZES, make_model  # noqa: E402


def max_relative_difference(a: Path, b: Path) -> float:
    """Max over tensors of ``max|a − b| / max|a|`` (the two outputs have the same tensors)."""
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    if x.keys() != y.keys():
        raise RuntimeError("the outputs hold different tensors")
    return max(float((x[k].double() - y[k].double()).abs().max() / x[k].double().abs().max().clamp_min(1e-30)) for k in x)


def timed(command: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="0.2b", choices=[s for s in SIZES if s != "tiny"])
    p.add_argument("--method", default="replaceme-lstsq")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="the 30M model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    size_name = "30m" if args.quick else args.size
    report = common.Report("distributed", args.quick, vars(args))
    bin_dir = Path(sys.executable).parent
    root = Path(tempfile.mkdtemp(prefix="replaceme-dist-bench-"))
    try:
        path, size = make_model(size_name, root, args.seed)

        def prune(out: str) -> list[str]:
            return [str(bin_dir / "replaceme"), "prune", str(path), "-m", args.method, "-n", str(args.layers),
                    "--calib", str(DEMO / "calibration.txt"), "--calib-samples", str(args.calib_samples),
                    "--max-length", str(args.max_length), "--batch-size", "4", "--no-cache", "--output", str(root / out)]

        torchrun = [str(bin_dir / "torchrun"), "--nproc_per_node", "2", "--no-python"]
        runs = [("1 process, 1 thread", prune("one-1t"), 1), ("1 process, 2 threads", prune("one-2t"), 2),
                ("torchrun: 2 processes, 1 thread each", torchrun + prune("two"), 1)]
        seconds = {}
        for label, command, threads in runs:
            seconds[label] = timed(command, threads)
            print(label, round(seconds[label], 1), flush=True)
        base = seconds[runs[0][0]]
        outputs = {runs[0][0]: "one-1t", runs[1][0]: "one-2t", runs[2][0]: "two"}
        rows = []
        for label, _, _ in runs:
            diff = max_relative_difference(root / "one-1t", root / outputs[label])
            rows.append([label, round(seconds[label], 1), round(seconds[label] / base, 3), f"{diff:.2e}"])
        hidden, layers, vocab = SIZES[size_name]
        report.table(
            f"prune -m {args.method} -n {args.layers} on a random-weight Llama ({size_name}: hidden {hidden}, {layers} layers, "
            f"{size / 2**20:.0f} MB float32), {args.calib_samples} × ≤{args.max_length} calibration tokens, CPU",
            ["run", "wall s", "× 1 process", "max rel weight diff vs 1 process"],
            rows,
            caption="wall = the whole command (start-up, load, calibration pass, solve, write); max rel weight diff = max "
                    "over tensors of max|a − b| / max|a| against the 1-process, 1-thread output.",
        )
        report.save({"seconds": seconds})
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
