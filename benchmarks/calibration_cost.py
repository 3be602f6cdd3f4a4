"""Cost of the shared statistics pass against a bare forward pass over the same tokens.

For random-weight ``LlamaForCausalLM`` models of realistic proportions (scaled down to
fit a CPU) and several calibration sizes, each configuration is measured in three
fresh processes (so peak-RSS deltas do not inherit each other's freed pages):

- ``bare``: the decoder stack's forward pass (``model.model``: no LM head, as the
  statistics pass stops after the last layer) over every calibration batch;
- ``distances``: ``collect_stats`` asked only for the distance tables of block sizes
  1..n (what a selection-only pass, e.g. the reference's first pass or UIDL, needs);
- ``lstsq``: ``collect_stats`` with the request ``replaceme-lstsq`` makes for removing
  n layers (``resolve_method("replaceme-lstsq").stats_request(L, n)``: distance tables
  for 1 and n, float64 Gram sums ``XᵀX``, ``XᵀY`` for every candidate block of size n,
  held-out activations for diagnostics) plus the distance tables 1..n that ``compare``
  adds; then select + solve + fold (``apply_method``), timed separately;
- ``cosine`` (optional, ``--modes``): the ``replaceme-cosine`` request (token sample
  bounded by ``token_budget``) plus select + Adam fit + fold.

Memory is the peak RSS during the pass minus the RSS with the model and the data
loaded (sampled every 5 ms by ``replaceme.resources.Meter``); on CUDA, the peak of
``torch.cuda.max_memory_allocated`` over what was allocated before the pass.

    python benchmarks/calibration_cost.py            # full CPU run (~6-7 min on 2 loaded cores)
    python benchmarks/calibration_cost.py --quick    # smoke run (~1.5 min)
    # on a GPU, Llama-3-8B shape, random weights, bf16 (see benchmarks/README.md):
    python benchmarks/calibration_cost.py --device cuda --dtype bfloat16 --shape llama3-8b \\
        --sequences 1000 --seq-len 1024 --modes bare,distances,lstsq,cosine --min-rounds 1 --min-seconds 0
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

#: named shapes: hidden, intermediate, layers, heads, kv heads, vocab
SHAPES = {
    "llama3-8b": dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256),
    "llama2-7b": dict(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000),
    "smoke": dict(hidden=128, intermediate=448, layers=8, heads=2, kv_heads=1, vocab=1000),  # tests this code path on CPU
}
#: the ReplaceMe paper's calibration size for its timings (8000 sequences × 1024 tokens)
PAPER_TOKENS = 8000 * 1024


def small_shape(hidden: int, layers: int, vocab: int) -> dict:
    """Llama-3 proportions scaled down: MLP 3.5×hidden, head dim 64, 4 query heads per KV head."""
    heads = max(1, hidden // 64)
    return dict(hidden=hidden, intermediate=int(round(3.5 * hidden / 64)) * 64, layers=layers, heads=heads,
                kv_heads=max(1, heads // 4), vocab=vocab)


# --------------------------------------------------------------------------- worker


def build_model(shape: dict, device: str, dtype_name: str, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, dtype_name)
    config = LlamaConfig(
        hidden_size=shape["hidden"], intermediate_size=shape["intermediate"], num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"], vocab_size=shape["vocab"],
        max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def save_random_llama(path: Path, hidden: int, layers: int, vocab: int, seed: int) -> int:
    """Save a random-weight Llama of :func:`small_shape` with the demo tokenizer at ``path``; its weight bytes."""
    from transformers import AutoTokenizer

    model = build_model(small_shape(hidden, layers, vocab), "cpu", "float32", seed)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(common.ROOT / "replaceme" / "demo" / "weights").save_pretrained(path)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def synthetic_calibration(sequences: int, seq_len: int, batch_size: int, vocab: int, seed: int):
    """Random token ids, full-length rows (no padding), as ``CalibrationData``."""
    import torch

    from replaceme.calibration import CalibrationData, CalibrationSpec

    gen = torch.Generator().manual_seed(seed)
    ids, masks = [], []
    for start in range(0, sequences, batch_size):
        b = min(batch_size, sequences - start)
        ids.append(torch.randint(3, vocab, (b, seq_len), generator=gen))
        masks.append(torch.ones(b, seq_len, dtype=torch.bool))
    spec = CalibrationSpec("synthetic-random-ids", samples=sequences, max_length=seq_len, batch_size=batch_size, seed=seed)
    return CalibrationData(ids, masks, spec)


def worker(job: dict) -> dict:
    """Measure one configuration in this fresh process.

    First the memory pass of ``job["mode"]`` (peak RSS / CUDA over the loaded model);
    then, when ``job["timing_modes"]`` is set, timing rounds: each round runs one pass
    of every timing mode in turn, in the same process, so that all modes see the same
    machine load; rounds go on until ``min_seconds`` have run (at least ``min_rounds``,
    at most ``max_rounds``) and the fastest pass of each mode is kept.
    """
    import torch

    from replaceme.registry import adapter_for
    from replaceme.methods import resolve_method
    from replaceme.pipeline import apply_method
    from replaceme.resources import Meter
    from replaceme.stats.collect import collect_stats
    from replaceme.stats.request import StatsRequest

    common.quiet()
    torch.set_num_threads(job["threads"])
    device = job["device"]
    cuda = device.startswith("cuda")
    shape = job["shape"]
    L, n = shape["layers"], job["remove"]
    model = build_model(shape, device, job["dtype"], job["seed"])
    adapter = adapter_for(model)
    calib = synthetic_calibration(job["sequences"], job["seq_len"], job["batch_size"], shape["vocab"], job["seed"])
    mode = job["mode"]
    methods, requests = {}, {"distances": StatsRequest(block_sizes=set(range(1, n + 1)))}
    for m in ("lstsq", "cosine"):
        methods[m] = resolve_method(f"replaceme-{m}")
        requests[m] = methods[m].stats_request(L, n)
        requests[m].block_sizes |= set(range(1, n + 1))  # as compare adds

    def run_pass(which: str):
        if which == "bare":
            with torch.no_grad():
                for ids, mask in zip(calib.input_ids, calib.masks):
                    model.model(input_ids=ids.to(device), attention_mask=mask.long().to(device), use_cache=False)
            result = None
        else:
            result = collect_stats(model, adapter, calib, requests[which], holdout_tokens=job["holdout_tokens"])
        if cuda:
            torch.cuda.synchronize()
        return result

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = common.rss()
    cuda0 = torch.cuda.memory_allocated() if cuda else 0
    out = {"mode": mode, "tokens": calib.num_tokens, "model_rss_mb": rss0 / 2**20,
           "params": sum(p.numel() for p in model.parameters())}
    with Meter(interval=0.005) as meter:
        stats = run_pass(mode)
    out["first_pass_seconds"] = meter.usage.seconds
    out["peak_rss_delta_mb"] = (meter.usage.peak_rss - rss0) / 2**20
    if cuda:
        out["peak_cuda_delta_mb"] = (torch.cuda.max_memory_allocated() - cuda0) / 2**20
    if stats is not None:
        mem = stats.memory_bytes()
        out.update(gram_mb=mem["gram"] / 2**20, sample_mb=mem["sample"] / 2**20, gram_blocks=len(stats.gram),
                   holdout_batches=len(stats.sample.holdout),
                   train_sample_tokens=sum(b.tokens for b in stats.sample.train))
    if mode in methods:
        with Meter(interval=0.005) as meter:
            outcome = apply_method(model, adapter, methods[mode], n, stats, seed=job["seed"])
            if cuda:
                torch.cuda.synchronize()
        out["apply_seconds"] = meter.usage.seconds
        out["apply_peak_rss_delta_mb"] = (meter.usage.peak_rss - rss0) / 2**20
        out["blocks"] = " ".join(str(b) for b in outcome.plan.blocks)
    del stats
    gc.collect()

    timing = job.get("timing_modes") or []
    times: dict[str, list[float]] = {m: [] for m in timing}
    cpu_times: dict[str, list[float]] = {m: [] for m in timing}
    rounds = 0
    while timing and (rounds < job["min_rounds"] or
                      (sum(map(sum, times.values())) < job["min_seconds"] and rounds < job["max_rounds"])):
        for m in timing:
            t0, c0 = time.perf_counter(), time.process_time()
            result = run_pass(m)
            times[m].append(time.perf_counter() - t0)
            cpu_times[m].append(time.process_time() - c0)
            del result
        rounds += 1
    out["times"] = times
    out["cpu_times"] = cpu_times
    out["seconds"] = {m: min(v) for m, v in times.items()}
    out["cpu_seconds"] = {m: min(v) for m, v in cpu_times.items()}
    return out


# --------------------------------------------------------------------------- driver


def parse_list(text: str, cast=int) -> list:
    return [cast(x) for x in str(text).split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    p.add_argument("--shape", default=None, choices=sorted(SHAPES),
                   help="measure one named full-size shape (random weights) instead of the CPU sweeps")
    p.add_argument("--sequences", default="64,256,1024", help="calibration sizes (sequences) of the token sweep")
    p.add_argument("--seq-len", type=int, default=32, help="tokens per sequence")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sweep-hidden", type=int, default=256, help="hidden size of the token sweep")
    p.add_argument("--sweep-layers", type=int, default=8, help="layers of the token sweep and the width sweep")
    p.add_argument("--widths", default="256,512,1024", help="hidden sizes of the width sweep")
    p.add_argument("--depths", default="8,16,24", help="layer counts of the depth sweep")
    p.add_argument("--depth-hidden", type=int, default=256, help="hidden size of the depth sweep")
    p.add_argument("--shape-sequences", type=int, default=32, help="calibration sequences of the width/depth sweeps")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--remove-frac", type=float, default=0.25, help="n = round(L × this) layers removed (block size)")
    p.add_argument("--holdout-tokens", type=int, default=8192, help="held-out activations kept (pipeline default 8192)")
    p.add_argument("--no-holdout-rows", action="store_true",
                   help="skip the extra token-sweep memory rows with holdout_tokens=0")
    p.add_argument("--modes", default="bare,distances,lstsq", help="subset of bare,distances,lstsq,cosine")
    p.add_argument("--min-seconds", type=float, default=6.0,
                   help="timing rounds (one pass of every mode, in one process) go on until this much time has run")
    p.add_argument("--min-rounds", type=int, default=2)
    p.add_argument("--max-rounds", type=int, default=4)
    args = common.parse_or_work(p, worker)
    if args is None:
        return

    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.quick:
        args.sequences, args.widths, args.depths = "32,128", "128,256", "4,8"
        args.sweep_hidden, args.sweep_layers, args.depth_hidden, args.shape_sequences = 128, 4, 256, 32
    modes = parse_list(args.modes, str)
    configs: list[tuple[str, dict, int]] = []  # (sweep label, shape, sequences)
    if args.shape:
        for s in parse_list(args.sequences):
            configs.append((args.shape, SHAPES[args.shape], s))
    else:
        for s in parse_list(args.sequences):
            configs.append(("tokens", small_shape(args.sweep_hidden, args.sweep_layers, args.vocab), s))
        for h in parse_list(args.widths):
            configs.append(("width", small_shape(h, args.sweep_layers, args.vocab), args.shape_sequences))
        for depth in parse_list(args.depths):
            configs.append(("depth", small_shape(args.depth_hidden, depth, args.vocab), args.shape_sequences))

    name = "calibration_cost" + (f"-{args.shape}-{args.device.replace(':', '')}" if args.shape else "")
    report = common.Report(name, args.quick, vars(args))
    cuda = args.device.startswith("cuda")
    script = Path(__file__).resolve()
    results: dict[tuple, dict] = {}
    for sweep, shape, seqs in configs:
        key = (shape["hidden"], shape["layers"], seqs)
        if key in results:
            continue
        remove = max(1, round(shape["layers"] * args.remove_frac))
        results[key] = {"shape": shape, "remove": remove}
        # memory: one fresh process per mode; timing: rounds over every mode in the first one
        for i, mode in enumerate(modes):
            job = dict(mode=mode, shape=shape, sequences=seqs, seq_len=args.seq_len, batch_size=args.batch_size,
                       remove=remove, device=args.device, dtype=dtype, threads=args.threads, seed=args.seed,
                       holdout_tokens=args.holdout_tokens, timing_modes=modes if i == 0 else [],
                       min_seconds=args.min_seconds, min_rounds=args.min_rounds, max_rounds=args.max_rounds)
            t0 = time.time()
            results[key][mode] = common.run_worker(script, job)
            r = results[key][mode]
            timing = "  ".join(f"{m} {v:.2f} s" for m, v in r["seconds"].items())
            print(f"  h={shape['hidden']:5d} L={shape['layers']:2d} seqs={seqs:5d} {mode:9s} first pass "
                  f"{r['first_pass_seconds']:7.2f} s, peak ΔRSS {r['peak_rss_delta_mb']:7.1f} MB  {timing}  "
                  f"(worker {time.time() - t0:.0f} s, load {common.load_average()})", flush=True)

    stat_modes = [m for m in modes if m != "bare"]
    columns = ["sweep", "hidden", "layers", "n", "seqs", "tokens", "bare fwd s"]
    for m in stat_modes:
        columns += [f"{m} s", f"{m}/bare"]

    if "lstsq" in modes:
        columns += ["solve+fold s"]
    if "cosine" in modes:
        columns += ["cos fit+fold s"]
    columns += [f"ΔRSS {m} MB" for m in modes]
    if cuda:
        columns += [f"ΔCUDA {m} MB" for m in modes]
    stat_mode = "lstsq" if "lstsq" in modes else ("cosine" if "cosine" in modes else None)
    if stat_mode:
        columns += ["Gram MB", "held-out/sample MB", f"ΔRSS {stat_mode} − Gram − held-out"]
    if "cosine" in modes:
        columns += ["cosine sample MB"]
    if args.shape:
        columns += [f"{m} s @8000×1024 (extrap.)" for m in modes]
    rows = []
    for sweep, shape, seqs in configs:
        res = results[(shape["hidden"], shape["layers"], seqs)]
        anyr = res[modes[0]]
        secs = anyr["seconds"]  # timing rounds ran in the first mode's process
        row = [sweep, shape["hidden"], shape["layers"], res["remove"], seqs, anyr["tokens"], secs.get("bare")]
        for m in stat_modes:
            row += [secs[m], secs[m] / secs["bare"] if "bare" in secs else None]
        if "lstsq" in modes:
            row.append(res["lstsq"]["apply_seconds"])
        if "cosine" in modes:
            row.append(res["cosine"]["apply_seconds"])
        row += [res[m]["peak_rss_delta_mb"] for m in modes]
        if cuda:
            row += [res[m].get("peak_cuda_delta_mb") for m in modes]
        if stat_mode:
            r = res[stat_mode]
            row += [r["gram_mb"], r["sample_mb"], r["peak_rss_delta_mb"] - r["gram_mb"] - r["sample_mb"]]
        if "cosine" in modes:
            row.append(res["cosine"]["sample_mb"])
        if args.shape:
            row += [secs[m] * PAPER_TOKENS / anyr["tokens"] + res[m].get("apply_seconds", 0.0) for m in modes]
        rows.append(row)
    where = f"{args.device}, {dtype}"
    report.table(f"Shared statistics pass vs bare forward ({where}, seq len {args.seq_len}, batch {args.batch_size})",
                 columns, rows,
                 caption="n = layers removed (block size); s = seconds, fastest pass of 'rounds' that run every mode in "
                         "turn in one process (so all modes see the same load); x/bare = ratio of those; "
                         "ΔRSS = peak RSS minus RSS with model and data loaded; Gram = float64 XᵀX/XᵀY of all "
                         "candidate blocks; held-out = activations kept for diagnostics (≤ holdout-tokens).")
    extra = {}
    if "lstsq" in modes and not args.shape and not args.no_holdout_rows:
        # the same token sweep with no held-out activations: what is left is the statistics themselves
        flat = []
        for sweep, shape, seqs in configs:
            if sweep != "tokens":
                continue
            remove = max(1, round(shape["layers"] * args.remove_frac))
            job = dict(mode="lstsq", shape=shape, sequences=seqs, seq_len=args.seq_len, batch_size=args.batch_size,
                       remove=remove, device=args.device, dtype=dtype, threads=args.threads, seed=args.seed,
                       holdout_tokens=0, timing_modes=[], min_seconds=0, min_rounds=0, max_rounds=0)
            r = common.run_worker(script, job)
            extra[f"noholdout-{seqs}"] = r
            with_holdout = results[(shape["hidden"], shape["layers"], seqs)]
            flat.append([shape["hidden"], shape["layers"], remove, seqs, r["tokens"], with_holdout["bare"]["peak_rss_delta_mb"]
                         if "bare" in with_holdout else None, r["peak_rss_delta_mb"], r["gram_mb"], r["sample_mb"],
                         with_holdout["lstsq"]["peak_rss_delta_mb"], with_holdout["lstsq"]["sample_mb"]])
            print(f"  no held-out: seqs={seqs} ΔRSS {r['peak_rss_delta_mb']:.1f} MB", flush=True)
        report.table("Memory as calibration tokens grow: lstsq statistics pass without / with held-out activations",
                     ["hidden", "layers", "n", "seqs", "tokens", "ΔRSS bare MB", "ΔRSS lstsq, holdout_tokens=0 MB",
                      "Gram MB", "kept MB", "ΔRSS lstsq, default holdout MB", "held-out MB (default)"], flat,
                     caption="holdout_tokens=0 keeps no activations (collect_stats' argument; the pipeline uses 8192): "
                             "the pass then holds only the float64 Gram sums and its rolling window, whatever the "
                             "number of tokens.")
    report.save({"results": {f"{k[0]}x{k[1]}x{k[2]}": v for k, v in results.items()}, "extra": extra})


if __name__ == "__main__":
    main()
