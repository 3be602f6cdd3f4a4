"""Statistics memory: one pass vs two (``--stats-passes``), estimated and measured.

For each method, ``replaceme prune`` runs twice on a random-weight Llama with the demo
tokenizer and calibration text, with ``--stats-passes 1`` and ``2``. From each run's
``pruning.json`` (``statistics_memory``): the estimate logged before the pass
(``replaceme/stats/estimate.py``) and the bytes measured after it (Gram sums and
activation sample); from outside: the command's peak RSS and wall time. The outputs of
the two runs are compared tensor by tensor (max relative difference).

    python benchmarks/stats_memory.py                 # 0.2B (hidden 1024, 10 layers), -n 4, 64 × 128 tokens
    python benchmarks/stats_memory.py --quick         # the 30M model
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from compare_memory import DEMO, SIZES, make_model  # noqa: E402
from offload_memory import max_relative_difference, peak_rss_of  # noqa: E402

MB = 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="0.2b", choices=[s for s in SIZES if s != "tiny"])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--methods", default="replaceme-lstsq,replaceme-cosine")
    p.add_argument("--quick", action="store_true", help="the 30M model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    size_name = "30m" if args.quick else args.size
    report = common.Report("stats_memory", args.quick, vars(args))
    exe = str(Path(sys.executable).parent / "replaceme")
    root = Path(tempfile.mkdtemp(prefix="replaceme-stats-memory-"))
    rows, raw = [], {}
    try:
        path, size = make_model(size_name, root, args.seed)
        for method in args.methods.split(","):
            outs = {}
            for passes in ("1", "2"):
                out = root / f"{method}-{passes}"
                extra = ["-o", "lbfgs_steps", "20"] if "cosine" in method else []
                command = [exe, "prune", str(path), "-m", method, "-n", str(args.layers), *extra, "--calib",
                           str(DEMO / "calibration.txt"), "--calib-samples", str(args.calib_samples), "--max-length",
                           str(args.max_length), "--batch-size", "4", "--no-cache", "--stats-passes", passes,
                           "--output", str(out)]
                peak, seconds = peak_rss_of(command)
                memory = json.loads((out / "pruning.json").read_text())["statistics_memory"]
                raw[f"{method}-{passes}"] = {"peak_rss": peak, "seconds": seconds, "statistics_memory": memory}
                est = memory["estimate"]
                rows.append([method, passes, round(est["gram_bytes"] / MB, 1), round(memory["gram"] / MB, 1),
                             round(est["sample_bytes"] / MB, 1), round(memory["sample"] / MB, 1), round(peak / MB),
                             round(seconds, 1)])
                outs[passes] = out
                print(rows[-1], flush=True)
            rows[-1].append(f"{max_relative_difference(outs['1'], outs['2']):.1e}")
            rows[-2].append("")
        hidden, layers, _ = SIZES[size_name]
        report.table(
            f"prune -n {args.layers} on a random-weight Llama ({size_name}: hidden {hidden}, {layers} layers, "
            f"{size / MB:.0f} MB float32), {args.calib_samples} × ≤{args.max_length} calibration tokens, CPU",
            ["method", "passes", "Gram est. MB", "Gram MB", "sample est. MB", "sample MB", "peak RSS MB", "wall s",
             "max rel weight diff 1 vs 2"],
            rows,
            caption="est. = the estimate logged before the pass and recorded in pruning.json; Gram/sample MB = what "
                    "the pass held (pruning.json statistics_memory); peak RSS and wall time of the whole command.",
        )
        report.save(raw)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
