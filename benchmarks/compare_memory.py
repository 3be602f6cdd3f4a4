"""Peak memory of ``replaceme compare`` against the number of methods: variants vs deep copies.

Random-weight Llamas with Llama-3 proportions (``calibration_cost.small_shape``),
float32, saved as safetensors with the demo's word-level tokenizer and its
calibration and validation texts (shipped in the package). Each run is the real CLI
(``replaceme compare ...``, called in-process by a fresh worker interpreter), and its
peak RSS is the worker's ``ru_maxrss``; "above a tiny run" subtracts the same command
on a tiny model (interpreter, torch, transformers, lm-eval imports).

Two strategies, same command:

- ``variant`` (now): each method prunes a variant sharing every tensor but the layers
  its merger writes (:mod:`replaceme.variant`);
- ``deepcopy`` (before): ``apply_method`` is wrapped so that each method prunes
  ``copy.deepcopy(model)`` in place, which is what ``compare`` did before variants.

    python benchmarks/compare_memory.py                 # 0.2B model, 1, 2 and 4 methods
    python benchmarks/compare_memory.py --quick         # a 30M model, 1 and 4 methods
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

DEMO = common.ROOT / "replaceme" / "demo" / "weights"
METHODS = ["replaceme-lstsq", "uidl", "replaceme-cosine", "llm-streamline"]
#: name -> (hidden, layers, vocab)
SIZES = {"tiny": (64, 4, 185), "30m": (256, 8, 32000), "0.2b": (1024, 10, 32000)}


def make_model(name: str, root: Path, seed: int) -> tuple[Path, int]:
    """Save a random-weight Llama of size ``name`` with the demo tokenizer; its weight bytes."""
    from calibration_cost import save_random_llama

    path = root / name
    return path, save_random_llama(path, *SIZES[name], seed)


def compare_args(job: dict) -> list[str]:
    args = ["compare", job["model"], "--layers", str(job["layers"]), "--calib", str(DEMO / "calibration.txt"),
            "--calib-samples", str(job["calib_samples"]), "--max-length", str(job["max_length"]), "--batch-size", "4",
            "--ppl", str(DEMO / "validation.txt"), "--max-ppl-tokens", str(job["ppl_tokens"]),
            "--context-length", str(job["context"]), "--no-cache", "--json"]
    for m in job["methods"]:
        args += ["-m", m]
    return args


def worker(job: dict) -> dict:
    import copy
    import json
    import resource
    import time

    import torch

    common.quiet()
    torch.set_num_threads(job["threads"])
    if job["strategy"] == "deepcopy":  # what compare did before variants
        import replaceme.pipeline as pipeline

        apply_method = pipeline.apply_method

        from replaceme.variant import VARIANT

        def deepcopy_apply(model, adapter, method, layers, stats, *, target=None, **kw):
            pruned = copy.deepcopy(model) if target is VARIANT else model
            outcome = apply_method(pruned, adapter, method, layers, stats, **kw)
            outcome.model = pruned
            return outcome

        pipeline.apply_method = deepcopy_apply
    from click.testing import CliRunner

    from replaceme.cli import cli

    t0 = time.perf_counter()
    result = CliRunner().invoke(cli, compare_args(job))
    seconds = time.perf_counter() - t0
    if result.exit_code != 0:
        raise RuntimeError(result.output[-3000:])
    rows = json.loads(result.stdout)
    ppl = {f"{r['method']}": next(v for k, v in r.items() if k.startswith("ppl")) for r in rows}
    return {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "seconds": seconds, "ppl": ppl}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="0.2b", choices=[s for s in SIZES if s != "tiny"])
    p.add_argument("--counts", default="1,2,4", help="numbers of methods (prefixes of: " + ", ".join(METHODS) + ")")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--ppl-tokens", type=int, default=4096)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="the 30M model, 1 and 4 methods")
    args = common.parse_or_work(p, worker)
    if args is None:
        return
    size_name = "30m" if args.quick else args.size
    counts = [1, 4] if args.quick else [int(c) for c in args.counts.split(",")]
    report = common.Report("compare_memory", args.quick, vars(args))
    root = Path(tempfile.mkdtemp(prefix="replaceme-compare-bench-"))
    try:
        tiny, _ = make_model("tiny", root, args.seed)
        path, size = make_model(size_name, root, args.seed)
        base = dict(layers=args.layers, calib_samples=args.calib_samples, max_length=args.max_length,
                    ppl_tokens=args.ppl_tokens, context=args.context, threads=args.threads)
        script = Path(__file__).resolve()
        rows, results = [], {}
        for count in counts:
            methods = METHODS[:count]
            for strategy in ("deepcopy", "variant"):
                floor = common.run_worker(script, {**base, "model": str(tiny), "methods": methods, "strategy": strategy})
                run = common.run_worker(script, {**base, "model": str(path), "methods": methods, "strategy": strategy})
                results[(count, strategy)] = run
                above = run["peak_rss"] - floor["peak_rss"]
                print(count, strategy, round(above / 2**20), round(above / size, 3), flush=True)
                results[(count, strategy, "above")] = above
            old, new = results[(count, "deepcopy", "above")], results[(count, "variant", "above")]
            same = results[(count, "deepcopy")]["ppl"] == results[(count, "variant")]["ppl"]
            rows.append([count, ", ".join(METHODS[:count]), round(old / 2**20), round(old / size, 3),
                         round(results[(count, "deepcopy")]["seconds"], 1), round(new / 2**20), round(new / size, 3),
                         round(results[(count, "variant")]["seconds"], 1), round(new / old, 3), "yes" if same else "NO"])
        hidden, layers, vocab = SIZES[size_name]
        report.table(
            f"replaceme compare on a random-weight Llama ({size_name}: hidden {hidden}, {layers} layers, vocab {vocab}, "
            f"{size / 2**20:.0f} MB float32), -n {args.layers}: peak RSS above a tiny run",
            ["methods", "which", "deepcopy ΔRSS MB", "deepcopy ×model", "deepcopy s", "variant ΔRSS MB", "variant ×model",
             "variant s", "variant/deepcopy", "same ppl"],
            rows,
            caption=f"ΔRSS = peak RSS (ru_maxrss) of a fresh process running the CLI minus the same command on a tiny "
                    f"model (hidden 64, 4 layers); ×model = ΔRSS / weight bytes; {args.calib_samples} × ≤{args.max_length} "
                    f"calibration tokens, perplexity on {args.ppl_tokens} tokens in windows of {args.context}; "
                    "same ppl = every row's perplexity equal (==) between the two strategies.",
        )
        report.save({"model_bytes": size, "runs": {f"{k[0]}-{k[1]}": v for k, v in results.items() if len(k) == 2}})
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
