"""One command for a GPU: ReplaceMe LSTSQ and the Adam cosine method on a Llama-3-8B
shape, then ``compare --offload`` and ``evaluate --offload`` through the CLI, with the
time and peak GPU memory of every stage, beside the paper's A100 timings.

The ReplaceMe paper (arXiv 2505.02819) reports, for removing 8 of Llama-3-8B's 32 layers
with 8,000 × 1,024 calibration tokens on one A100, **689 s for LSTSQ** and **4,522 s
for the cosine method** (Adam, lr 1e-4, 1,024-token batches, 10 epochs over every
calibration token). This script measures the same methods at the same settings on a
**stated fraction** of the calibration set (``--fraction``, default 1/16: 500 × 1,024
tokens), in bfloat16, with random weights of the Llama-3-8B shape (hidden 4096, MLP
14336, 32 layers, 32 heads, 8 KV heads, vocab 128256) and random token ids. Nothing is
extrapolated: the table gives our seconds at our token count and the paper's at its
own, side by side.

1. ``lstsq``: a distance pass, selection, then a pass for the chosen block's float64
   ``XᵀX``/``XᵀY`` only (``--stats-passes 2``), solve, fold (into a variant);
2. ``cosine``: a distance pass, selection, then the activation sample of the chosen
   block (every calibration token, as the paper; ``--spill-dir`` puts it on disk),
   Adam from T = I at the paper's settings (``--epochs``, default 10), fold;
3. ``offload``: the model saved as a safetensors checkpoint (16 GB) with the demo's
   tokenizer, then ``replaceme compare DIR --offload -m uidl -m replaceme-lstsq -n 8``
   with perplexity on the demo's validation text, and ``replaceme evaluate DIR
   --offload``; wall time from outside, peak GPU memory not measured there.

Sized for one H100 80 GB, 128 GiB RAM and 64 GiB disk, in about 6 minutes: the model
takes 16 GB of GPU memory, the Gram sums 0.27 GB, the cosine sample 3 × tokens × 4096 ×
2 bytes of RAM (12.9 GB at 1/16), the checkpoint 16 GB of disk.

    python benchmarks/gpu_llama8b.py                          # on a GPU
    python benchmarks/gpu_llama8b.py --fraction 0.125 --epochs 5
    python benchmarks/gpu_llama8b.py --tiny                   # CPU smoke test of this script

**Status: never run on a GPU** (none was available where it was written); ``--tiny``
runs the same code on CPU in the test suite (``tests/test_offload.py``) and prints no
comparison with the paper.
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
DEMO = Path(__file__).resolve().parents[1] / "replaceme" / "demo" / "weights"


class Stage:
    """Wall time and peak CUDA memory of one stage (peak RSS on CPU), appended to ``rows``."""

    def __init__(self, rows: list, method: str, name: str, tokens: int, device: str):
        self.rows, self.method, self.name, self.tokens, self.device = rows, method, name, tokens, device

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
        self.rows.append([self.method, self.name, self.tokens, round(seconds, 2), round(peak, 2)])
        print(f"{self.method:7s} {self.name:28s} {seconds:9.2f} s  peak {peak:7.2f} GiB", flush=True)


def two_passes(model, adapter, calib, resolved, layers: int, rows: list, method: str, device: str, spill):
    """Distance pass, selection, the chosen blocks' statistics (``--stats-passes 2``)."""
    from replaceme.passes import merge_passes
    from replaceme.stats.collect import collect_stats

    tokens = sum(int(m.sum()) for m in calib.masks)
    L = adapter.num_layers(model)
    ctx = resolved.selection_context(L, layers)
    with Stage(rows, method, "distance pass", tokens, device):
        tables = collect_stats(model, adapter, calib, resolved.selector.stats_request(ctx), holdout_tokens=8192)
    blocks = list(resolved.selector.select(tables, ctx).blocks)
    with Stage(rows, method, "chosen-block statistics pass", tokens, device):
        stats = collect_stats(model, adapter, calib, resolved.compensator.stats_request(blocks), holdout_tokens=8192,
                              spill=spill)
    return merge_passes(tables, stats)


def offloaded_commands(root: Path, model, args, rows: list) -> None:
    """Save the model with the demo tokenizer; time ``compare --offload`` and ``evaluate --offload``."""
    import subprocess

    from transformers import AutoTokenizer

    path = root / "model"
    t0 = time.perf_counter()
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(DEMO).save_pretrained(path)
    rows.append(["offload", "save checkpoint", 0, round(time.perf_counter() - t0, 2), None])
    exe = [str(Path(sys.executable).parent / "replaceme")]
    calib = ["--calib", str(DEMO / "calibration.txt"), "--calib-samples", str(args.offload_samples), "--max-length",
             str(args.seq_len if not args.tiny else 32), "--batch-size", "4", "--no-cache"]
    ppl = ["--ppl", str(DEMO / "validation.txt"), "--max-ppl-tokens", str(args.ppl_tokens)]
    commands = {
        "compare --offload uidl+lstsq": [*exe, "compare", str(path), "--offload", "-m", "uidl", "-m", "replaceme-lstsq",
                                         "-n", str(args.layers), *calib, *ppl, "--output", str(root / "compare"), "--json"],
        "evaluate --offload": [*exe, "evaluate", str(path), "--offload", *ppl],
    }
    for name, command in commands.items():
        t0 = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode:
            print(f"{name} failed (exit {proc.returncode}): {proc.stderr.strip()[-600:]}", flush=True)
        rows.append(["offload", name, 0, round(seconds, 2) if not proc.returncode else f"failed ({proc.returncode})", None])
        print(f"offload {name:28s} {seconds:9.2f} s  exit {proc.returncode}", flush=True)


def main() -> None:
    import shutil
    import tempfile

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fraction", type=float, default=1 / 16, help="fraction of the paper's 8000 sequences (default 1/16)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layers", type=int, default=8, help="layers removed (paper: 8)")
    p.add_argument("--epochs", type=int, default=10, help="Adam epochs of the cosine fit (paper: 10)")
    p.add_argument("--spill-dir", help="keep the cosine sample in memory-mapped files under this directory")
    p.add_argument("--work-dir", help="where the offload checkpoint goes (default: a temporary directory, removed)")
    p.add_argument("--offload-samples", type=int, default=64, help="calibration sequences of compare --offload")
    p.add_argument("--ppl-tokens", type=int, default=16384, help="perplexity tokens of compare/evaluate --offload")
    p.add_argument("--device", default="cuda")
    p.add_argument("--methods", default="lstsq,cosine,offload")
    p.add_argument("--tiny", action="store_true", help="a tiny model on CPU, a few batches: checks this script runs")
    p.add_argument("--json", help="also write the table here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch

    from replaceme.methods import resolve_method
    from replaceme.pipeline import apply_method
    from replaceme.registry import adapter_for
    from replaceme.stats.spill import Spill
    from replaceme.variant import VARIANT

    if args.tiny:
        shape, device, dtype, sequences, seq_len, batch = TINY, "cpu", "float32", 16, 32, 4
        args.epochs, args.layers, args.offload_samples, args.ppl_tokens = 1, 2, 8, 256
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --tiny for the CPU smoke test")
        shape, device, dtype = LLAMA3_8B, args.device, "bfloat16"
        sequences, seq_len, batch = max(1, round(8000 * args.fraction)), args.seq_len, args.batch_size
    tokens = sequences * seq_len
    rows: list = []
    methods = args.methods.split(",")
    with Stage(rows, "-", "build model", tokens, device):
        model = build_model(shape, device, dtype, args.seed)
        adapter = adapter_for(model)
        calib = synthetic_calibration(sequences, seq_len, batch, shape["vocab"], args.seed)
    # the paper's cosine recipe: Adam from T = I, lr 1e-4, 1024-token batches, every calibration token
    options = {"lstsq": {}, "cosine": {"preset": "reference", "epochs": args.epochs, "token_budget": tokens}}
    for method in [m for m in methods if m in options]:
        resolved = resolve_method(f"replaceme-{method}", options[method])
        spill = Spill(args.spill_dir) if args.spill_dir and method == "cosine" else None
        try:
            stats = two_passes(model, adapter, calib, resolved, args.layers, rows, method, device, spill)
        finally:
            if spill is not None:
                spill.close()
        memory = stats.memory_bytes()
        print(f"{method}: Gram sums {memory['gram'] / 2**30:.2f} GiB, sample {memory['sample'] / 2**30:.2f} GiB", flush=True)
        with Stage(rows, method, "select+compensate+fold", tokens, device):
            outcome = apply_method(model, adapter, resolved, args.layers, stats, seed=args.seed, target=VARIANT)
        del outcome, stats
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    if "offload" in methods:
        root = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="replaceme-gpu-bench-"))
        try:
            offloaded_commands(root, model, args, rows)
        finally:
            if not args.work_dir:
                shutil.rmtree(root, ignore_errors=True)
    header = ["method", "stage", "calibration tokens", "seconds", "peak GiB (GPU; RSS with --tiny)"]
    print("\n" + " | ".join(header))
    for r in rows:
        print(" | ".join(str(x) for x in r))
    total = {m: round(sum(r[3] for r in rows if r[0] == m), 1) for m in options if m in methods}
    if not args.tiny:  # a CPU smoke test says nothing about the paper's timings
        for m, seconds in total.items():
            print(f"{m}: {seconds:.0f} s on {tokens} tokens ({torch.cuda.get_device_name(0)}); paper: {PAPER[m]:.0f} s on "
                  f"{PAPER_TOKENS} tokens (A100) — different token counts, not extrapolated")
    result = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu", "tokens": tokens,
              "fraction_of_paper_tokens": tokens / PAPER_TOKENS, "epochs": args.epochs, "shape": shape,
              "columns": header, "rows": rows, "total_s": total, "paper_s": None if args.tiny else PAPER,
              "tiny": args.tiny}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
