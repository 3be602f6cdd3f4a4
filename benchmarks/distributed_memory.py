"""Peak memory of each ``torchrun`` rank against one process (gloo, CPU).

A random-weight Llama (``compare_memory.SIZES``) and the demo's calibration text; the same
``replaceme prune`` command run once in one process and once under
``torchrun --nproc_per_node 2`` (1 thread per process). Every process reports its own peak
resident set size (``ru_maxrss``) at exit, so the table shows what rank 0 and rank 1 hold
at their peak beside the model: the float64 Gram sums and the activation sample the pass
keeps (what ``pruning.json`` records as ``statistics_memory``), and whatever the transfer to
rank 0 adds.

    python benchmarks/distributed_memory.py                      # 0.2B, replaceme-cosine -n 2, 64 x 128 tokens
    python benchmarks/distributed_memory.py --quick              # the 30M model
    python benchmarks/distributed_memory.py --method replaceme-lstsq
    python benchmarks/distributed_memory.py --extra "--memory-budget 8G"   # the sample in RAM
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from compare_memory import DEMO, SIZES, make_model  # noqa: E402


def as_rank(report: Path, args: list[str]) -> None:
    """Run the CLI in this process, then write this process's peak RSS (MiB) to ``report``."""
    from replaceme.cli import cli

    code = 0
    try:
        cli.main(args)  # the CLI's own error boundary; it ends with SystemExit
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        rank = os.environ.get("RANK", "single")
        (report / f"{rank}.json").write_text(json.dumps({"peak_mib": peak, "code": code}))
    sys.exit(code)


def main() -> None:
    if sys.argv[1:2] == ["--as-rank"]:  # internal: one measured process, the CLI's arguments follow
        as_rank(Path(sys.argv[2]), sys.argv[3:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="0.2b", choices=[s for s in SIZES if s != "tiny"])
    p.add_argument("--method", default="replaceme-cosine")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="the 30M model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra", default="", help="more prune options, one string (e.g. '--memory-budget 8G')")
    args = p.parse_args()
    size_name = "30m" if args.quick else args.size
    report = common.Report("distributed_memory", args.quick, vars(args))
    root = Path(tempfile.mkdtemp(prefix="replaceme-dist-mem-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        path, size = make_model(size_name, root, args.seed)
        rows, peaks = [], {}
        for label, launcher in (("1 process", [sys.executable]),
                                ("torchrun, 2 processes", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                           "--nproc_per_node", "2"])):
            out = root / label.split()[0]
            ranks = root / f"ranks-{label.split()[0]}"
            ranks.mkdir()
            command = [*launcher, str(Path(__file__).resolve()), "--as-rank", str(ranks), "prune", str(path),
                       "-m", args.method, "-n", str(args.layers), "--calib", str(DEMO / "calibration.txt"),
                       "--calib-samples", str(args.calib_samples), "--max-length", str(args.max_length),
                       "--batch-size", "4", "--no-cache", *shlex.split(args.extra), "--output", str(out)]
            proc = subprocess.run(command, capture_output=True, text=True, env=env)
            if proc.returncode:
                raise RuntimeError(f"{label} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
            stats = json.loads((out / "pruning.json").read_text()).get("statistics_memory", {})
            for name in sorted(f.stem for f in ranks.glob("*.json")):
                peak = json.loads((ranks / f"{name}.json").read_text())["peak_mib"]
                peaks[f"{label} / {name}"] = peak
                rows.append([label, "rank " + name if name != "single" else "-", round(peak), round(size / 2**20),
                             round(stats.get("gram", 0) / 2**20), round(stats.get("sample", 0) / 2**20)])
            print(label, "done", flush=True)
        hidden, layers, _ = SIZES[size_name]
        report.table(
            f"prune -m {args.method} -n {args.layers} {args.extra} on a random-weight Llama ({size_name}: hidden {hidden}, {layers} "
            f"layers), {args.calib_samples} × ≤{args.max_length} calibration tokens, gloo on CPU, 1 thread per process",
            ["run", "process", "peak RSS MiB", "model MiB", "Gram sums MiB", "sample MiB"],
            rows,
            caption="peak RSS = ru_maxrss of each process at exit; Gram sums and sample = the statistics rank 0 "
                    "applied (pruning.json statistics_memory), which one process holds as well.",
        )
        report.save({"peak_mib": peaks})
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
