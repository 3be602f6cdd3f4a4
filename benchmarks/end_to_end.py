"""Pipeline cost of pruning with every method: one shared pass vs one run per method.

Three strategies prune the same model with the same five methods (pruning only, no
evaluation, so that only the pipeline is measured), each in a fresh process:

- ``shared`` (what ``replaceme compare`` does, minus its evaluation): load the model
  once, tokenise the calibration set once, ONE statistics pass with the union of
  every method's request (plus distance tables 1..n+1, as ``run_comparison`` adds),
  then per method ``copy.deepcopy(model)`` + ``apply_method``;
- ``separate-1pass``: per method ``replaceme.prune(path, method=m, use_cache=False)``,
  which reloads the model from disk, re-tokenises and makes its own pass;
- ``separate-2pass`` (the reference implementations' behaviour): per method, reload
  the model, a distances-only pass (``collect_stats`` with block sizes 1..n+1, as the
  reference's selection script makes), then ``replaceme.prune(model, ...)`` on the
  loaded model, which makes the estimation pass.

Each pruned model's weights are hashed, so the table also says whether the separate
runs produce exactly the models the shared pass does.

    python benchmarks/end_to_end.py            # stories260K, 128 samples × 256 tokens, 1 layer
    python benchmarks/end_to_end.py --quick
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

METHODS = ["block-removal", "uidl", "replaceme-lstsq", "replaceme-cosine", "llm-streamline"]
STRATEGIES = ["shared", "separate-1pass", "separate-2pass"]


def weights_digest(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def worker(job: dict) -> dict:
    import copy

    import torch

    from replaceme.registry import adapter_for
    from replaceme.api import prune
    from replaceme.calibration import CalibrationSpec, build_calibration
    from replaceme.loading import load_model
    from replaceme.methods import resolve_method
    from replaceme.pipeline import apply_method, gather_stats
    from replaceme.resources import Meter
    from replaceme.stats.collect import collect_stats
    from replaceme.stats.request import StatsRequest

    common.quiet()
    torch.set_num_threads(job["threads"])
    n = job["layers"]
    spec = CalibrationSpec(job["calib"], samples=job["samples"], max_length=job["max_length"],
                           batch_size=job["batch_size"], seed=job["seed"])
    # Warm-up outside the measurement: the first load imports transformers' model code and
    # the tokenizer machinery, the first resolve_method loads the plugins (seconds and
    # ~200 MB for any model); every strategy pays that once per process, so it is
    # excluded from all of them.
    warm, warm_tok = load_model(job["model"], device="cpu", dtype="float32")
    build_calibration(CalibrationSpec(job["calib"], samples=2, max_length=8, seed=job["seed"]), warm_tok)
    for m in job["methods"]:  # loads the plugin registry (entry points) once
        resolve_method(m)
    del warm, warm_tok
    gc.collect()
    rss0 = common.rss()
    out: dict = {"strategy": job["strategy"], "per_method": {}, "digests": {}, "stages": {}}
    overhead = 0.0  # hashing the pruned weights and gc between methods: not part of any strategy
    with Meter(interval=0.005) as total:
        if job["strategy"] == "shared":
            t = time.perf_counter()
            model, tokenizer = load_model(job["model"], device="cpu", dtype="float32")
            out["stages"]["load"] = time.perf_counter() - t
            adapter = adapter_for(model)
            L = adapter.num_layers(model)
            resolved = {m: resolve_method(m) for m in job["methods"]}
            t = time.perf_counter()
            torch.manual_seed(job["seed"])
            calib = build_calibration(spec, tokenizer)
            out["stages"]["calibration"] = time.perf_counter() - t
            request = None
            for m in job["methods"]:
                req = resolved[m].stats_request(L, n)
                request = req if request is None else request.union(req)
            request.block_sizes |= set(range(1, min(n + 1, L - 1) + 1))  # as run_comparison
            t = time.perf_counter()
            stats = gather_stats(model, adapter, calib, request, use_cache=False)
            out["stages"]["statistics pass"] = time.perf_counter() - t
            out["tokens"] = stats.tokens
            out["sample_mb"] = stats.memory_bytes()["sample"] / 2**20
            for m in job["methods"]:
                t = time.perf_counter()
                pruned = copy.deepcopy(model)
                apply_method(pruned, adapter, resolved[m], n, stats, seed=job["seed"])
                out["per_method"][m] = time.perf_counter() - t
                t = time.perf_counter()
                out["digests"][m] = weights_digest(pruned)
                del pruned
                gc.collect()
                overhead += time.perf_counter() - t
        else:
            two_pass = job["strategy"] == "separate-2pass"
            for m in job["methods"]:
                t = time.perf_counter()
                if two_pass:
                    model, tokenizer = load_model(job["model"], device="cpu", dtype="float32")
                    adapter = adapter_for(model)
                    L = adapter.num_layers(model)
                    calib = build_calibration(spec, tokenizer)
                    request = StatsRequest(block_sizes=set(range(1, min(n + 1, L - 1) + 1)))
                    collect_stats(model, adapter, calib, request)
                    result = prune(model, method=m, layers=n, calibration=spec, tokenizer=tokenizer,
                                   device="cpu", dtype="float32", seed=job["seed"], use_cache=False)
                else:
                    result = prune(job["model"], method=m, layers=n, calibration=spec, device="cpu",
                                   dtype="float32", seed=job["seed"], use_cache=False)
                out["per_method"][m] = time.perf_counter() - t
                t = time.perf_counter()
                out["digests"][m] = weights_digest(result.model)
                del result
                gc.collect()
                overhead += time.perf_counter() - t
    out["seconds"] = total.usage.seconds - overhead
    out["benchmark_overhead_seconds"] = overhead
    out["peak_rss_delta_mb"] = (total.usage.peak_rss - rss0) / 2**20
    out["base_rss_mb"] = rss0 / 2**20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer samples and one repeat")
    p.add_argument("--model", default=None, help="model directory (default: <shared>/models/stories260K)")
    p.add_argument("--calib", default=None, help="calibration source (default: <shared>/data/tinystories/valid.txt[:2000])")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layers", type=int, default=1, help="net layers removed")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--repeats", type=int, default=3, help="runs of each strategy (interleaved); the median is reported")
    args = common.parse_or_work(p, worker)
    if args is None:
        return

    model = args.model or str(common.require_shared("models", "stories260K"))
    calib = args.calib or str(common.require_shared("data", "tinystories", "valid.txt")) + "[:2000]"
    if args.quick:
        args.samples, args.max_length, args.repeats = 32, 128, 1
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    report = common.Report("end_to_end", args.quick, {**vars(args), "model": model, "calib": calib})
    script = Path(__file__).resolve()
    runs: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
    for r in range(args.repeats):
        for s in STRATEGIES:
            job = dict(strategy=s, model=model, calib=calib, samples=args.samples, max_length=args.max_length,
                       batch_size=args.batch_size, layers=args.layers, methods=methods, threads=args.threads,
                       seed=args.seed)
            res = common.run_worker(script, job)
            runs[s].append(res)
            print(f"  repeat {r + 1}/{args.repeats} {s:15s} {res['seconds']:7.2f} s  peak ΔRSS "
                  f"{res['peak_rss_delta_mb']:7.1f} MB  load {common.load_average()}", flush=True)

    def med(values):
        return statistics.median(values)

    shared_total = med([x["seconds"] for x in runs["shared"]])
    reference = runs["shared"][0]["digests"]
    rows = []
    for s in STRATEGIES:
        totals = [x["seconds"] for x in runs[s]]
        same = all(x["digests"].get(m) == reference.get(m) for x in runs[s] for m in methods)
        rows.append([s, med(totals), min(totals), max(totals), med(totals) / shared_total,
                     med([x["peak_rss_delta_mb"] for x in runs[s]]), same])
    report.table(
        f"Pruning with {len(methods)} methods, {args.layers} layer(s), {args.samples} × {args.max_length}-token calibration",
        ["strategy", "total s (median)", "min s", "max s", "× shared", "peak ΔRSS MB", "same weights as shared"],
        rows,
        caption=f"{args.repeats} interleaved repeat(s), each in a fresh process; ΔRSS = peak RSS over the RSS "
                "before the model is loaded (after a discarded warm-up load, so imports are excluded everywhere).",
    )
    per_rows = []
    for m in methods:
        per_rows.append([m] + [med([x["per_method"][m] for x in runs[s]]) for s in STRATEGIES])
    stages = runs["shared"][0]["stages"]
    report.table("Seconds per method (median): shared = deepcopy + select/compensate/merge; separate = whole run",
                 ["method", *STRATEGIES], per_rows,
                 caption="shared stages (first repeat): " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items())
                         + f"; shared activation sample {runs['shared'][0].get('sample_mb', 0):.1f} MB, "
                           f"{runs['shared'][0].get('tokens')} calibration tokens")
    report.save({"runs": runs})


if __name__ == "__main__":
    main()
