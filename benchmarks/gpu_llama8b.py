"""One command for a GPU: ReplaceMe LSTSQ and cosine on a Llama-3-8B shape, time and
peak GPU memory per stage, set against the paper's A100 timings.

The ReplaceMe paper (arXiv 2505.02819) reports, for its 8-layer setting with
8,000 × 1,024 calibration tokens on one A100, **689 s for LSTSQ** and **4,522 s for
cosine** (whole method: calibration pass and estimation). This script builds a
random-weight Llama-3-8B shape (hidden 4096, MLP 14336, 32 layers, 32 heads, 8 KV
heads, vocab 128256) in bfloat16 on the GPU, feeds random token ids, and runs

1. ``lstsq``: the shared pass for ``replaceme-lstsq`` (distance tables, float64
   ``XᵀX``/``XᵀY`` of every candidate block) → select → solve → fold;
2. ``cosine``: the pass for ``replaceme-cosine`` (distance tables + activation
   sample of ``--cosine-tokens`` tokens, optionally spilled to ``--spill-dir``)
   → select → Adam fit (reference settings: lr 1e-4, 1024-token batches,
   10 epochs) → fold.

The calibration set is the paper's scaled down by ``--scale`` (default 1/8: 1,000 ×
1,024 tokens) so that the whole script finishes in about 10 minutes on an
A100/H100; the table also gives each stage extrapolated linearly to the paper's
8,000 × 1,024 tokens (pass and fit time grow linearly with tokens; solve and fold
do not). Pruning uses memory-lean variants (the base model stays unpruned for the
second method).

    python benchmarks/gpu_llama8b.py                       # on a GPU, ~10 min
    python benchmarks/gpu_llama8b.py --scale 1 --spill-dir /scratch   # the paper's full size
    python benchmarks/gpu_llama8b.py --tiny                # CPU smoke test of this script (seconds)

**Status: not run yet** (no GPU was available where it was written); `--tiny` is
tested in the test suite (``tests/test_offload.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_cost import build_model, synthetic_calibration  # noqa: E402

LLAMA3_8B = dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256)
TINY = dict(hidden=64, intermediate=224, layers=6, heads=4, kv_heads=1, vocab=1000)
PAPER = {"lstsq": 689.0, "cosine": 4522.0}  # seconds, Llama-3-8B, 8 layers, 8000×1024 tokens, one A100
PAPER_TOKENS = 8000 * 1024


class Stage:
    """Wall time and peak CUDA memory of one stage (peak RSS on CPU)."""

    def __init__(self, rows: list, method: str, name: str, tokens: int, scales: bool, device: str):
        self.rows, self.method, self.name, self.tokens, self.scales, self.device = rows, method, name, tokens, scales, device

    def __enter__(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import resource

        import torch

        if exc[0] is not None:
            return
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**30
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        seconds = time.perf_counter() - self.t0
        factor = PAPER_TOKENS / self.tokens if self.scales else 1.0
        self.rows.append([self.method, self.name, round(seconds, 2), round(peak, 2), round(seconds * factor, 1)])
        print(f"{self.method:7s} {self.name:22s} {seconds:9.2f} s  peak {peak:7.2f} GiB", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1 / 8, help="fraction of the paper's 8000 sequences (default 1/8)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layers", type=int, default=8, help="layers removed (paper: 8)")
    p.add_argument("--cosine-tokens", type=int, default=262144,
                   help="cosine activation sample (the paper fits on every token; see --spill-dir)")
    p.add_argument("--spill-dir", help="keep the cosine sample in memory-mapped files under this directory")
    p.add_argument("--device", default="cuda")
    p.add_argument("--methods", default="lstsq,cosine")
    p.add_argument("--tiny", action="store_true", help="a tiny model on CPU, a few batches: checks this script runs")
    p.add_argument("--json", help="also write the table here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch

    from replaceme.registry import adapter_for
    from replaceme.methods import resolve_method
    from replaceme.pipeline import apply_method
    from replaceme.variant import VARIANT
    from replaceme.stats.collect import collect_stats
    from replaceme.stats.spill import Spill

    if args.tiny:
        shape, device, dtype, sequences, seq_len, batch = TINY, "cpu", "float32", 16, 32, 4
        cosine_tokens, epochs, args.layers = 256, 1, 2
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --tiny for the CPU smoke test")
        shape, device, dtype = LLAMA3_8B, args.device, "bfloat16"
        sequences, seq_len, batch = max(1, round(8000 * args.scale)), args.seq_len, args.batch_size
        cosine_tokens, epochs = args.cosine_tokens, 10
    tokens = sequences * seq_len
    rows: list = []
    with Stage(rows, "-", "build model", tokens, False, device):
        model = build_model(shape, device, dtype, args.seed)
        adapter = adapter_for(model)
        calib = synthetic_calibration(sequences, seq_len, batch, shape["vocab"], args.seed)
    L = shape["layers"]
    options = {"lstsq": {}, "cosine": {"token_budget": cosine_tokens, "epochs": epochs}}
    for method in args.methods.split(","):
        resolved = resolve_method(f"replaceme-{method}", options[method])
        request = resolved.stats_request(L, args.layers)
        spill = Spill(args.spill_dir) if args.spill_dir and method == "cosine" else None
        try:
            with Stage(rows, method, "statistics pass", tokens, True, device):
                stats = collect_stats(model, adapter, calib, request, holdout_tokens=8192, spill=spill)
        finally:
            if spill is not None:
                spill.close()
        memory = stats.memory_bytes()
        print(f"{method}: Gram sums {memory['gram'] / 2**30:.2f} GiB, sample {memory['sample'] / 2**30:.2f} GiB", flush=True)
        with Stage(rows, method, "select+compensate+fold", cosine_tokens if method == "cosine" else tokens,
                   method == "cosine", device):
            outcome = apply_method(model, adapter, resolved, args.layers, stats, seed=args.seed, target=VARIANT)
        del outcome, stats
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    total = {m: sum(r[4] for r in rows if r[0] == m) for m in args.methods.split(",")}
    print()
    header = ["method", "stage", "seconds", "peak GiB", f"extrapolated to {PAPER_TOKENS} tokens, s"]
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(str(x) for x in r))
    for m, seconds in total.items():
        paper = PAPER.get(m)
        print(f"{m}: ours extrapolated {seconds:.0f} s" + (f" vs paper {paper:.0f} s (A100): ×{seconds / paper:.2f}" if paper else ""))
    result = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu", "tokens": tokens,
              "shape": shape, "columns": header, "rows": rows, "extrapolated_total_s": total, "paper_s": PAPER,
              "tiny": args.tiny}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
