"""What scoring a candidate plan costs: replay from the cached activations vs a full forward pass.

``calibration-loss``, SLEB and LaCo score plans with ``replaceme.scoring.PlanScorer``:
a variant owning only the layers the merge writes, run from the shared pass's cached
input of the first changed layer. This measures, on a random-weight Llama (``--layers``
deep), the time to score one LSTSQ-compensated block at several depths on the held-out
batches, by that replay and by a full forward pass from the embeddings (the scorer's
exact fallback), the largest difference between their losses, and the whole
``calibration-loss`` selection against the shared pass that precedes it.

    python benchmarks/scoring_cost.py                  # ~2 min on 2 cores
    python benchmarks/scoring_cost.py --layers 8 --hidden 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batches", type=int, default=40, help="calibration batches (a tenth is held out)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from replaceme.registry import adapter_for
    from replaceme.calibration import CalibrationData, CalibrationSpec
    from replaceme.methods import resolve_method
    from replaceme.pipeline import apply_method, gather_stats
    from replaceme.plan import Block, Plan
    from replaceme.scoring import PlanScorer

    common.quiet()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report = common.Report("scoring_cost", False, vars(args))
    h, L = args.hidden, args.layers
    model = LlamaForCausalLM(LlamaConfig(hidden_size=h, intermediate_size=4 * h, num_hidden_layers=L,
                                         num_attention_heads=max(1, h // 64), num_key_value_heads=max(1, h // 128),
                                         vocab_size=4096, max_position_embeddings=args.seq)).eval()
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(4, 4096, (args.batch_size, args.seq), generator=gen) for _ in range(args.batches)]
    masks = [torch.ones(args.batch_size, args.seq, dtype=torch.bool) for _ in ids]
    for m in masks:  # ragged: some padding, so the masks matter
        m[0, args.seq // 2 :] = False
    calib = CalibrationData(ids, masks, CalibrationSpec("<random>", batch_size=args.batch_size, max_length=args.seq))
    adapter = adapter_for(model)
    resolved = resolve_method("replaceme-lstsq", selector="calibration-loss")
    t0 = time.perf_counter()
    stats = gather_stats(model, adapter, calib, resolved.stats_request(L, 1), use_cache=False)
    pass_s = time.perf_counter() - t0
    held = sum(b.tokens for b in stats.sample.holdout)

    def timed(scorer, plan):
        times = []
        for _ in range(args.repeats):
            scorer._scores.clear()
            t = time.perf_counter()
            score = scorer.score(plan)
            times.append(time.perf_counter() - t)
        return statistics.median(times), score.loss

    rows = []
    for start in sorted({1, L // 4, L // 2, 3 * L // 4, L - 1}):
        plan = Plan([Block(start, start + 1)])
        fast = PlanScorer(model, adapter, stats, resolved.compensator, resolved.merger)
        full = PlanScorer(model, adapter, stats, resolved.compensator, resolved.merger)
        full._fast = False  # the exact fallback: every candidate from the embeddings
        fast.compensations(plan), full.compensations(plan)  # LSTSQ solve outside the timing
        t_fast, loss_fast = timed(fast, plan)
        assert fast._fast, "the replay path was not taken"
        t_full, loss_full = timed(full, plan)
        rows.append([f"[{start}, {start + 1})", L - start + 1, t_fast * 1e3, t_full * 1e3, t_full / t_fast,
                     abs(loss_fast - loss_full) / abs(loss_full)])
    report.table(f"Scoring one LSTSQ-compensated block ({L} layers, hidden {h}, {held} held-out tokens)",
                 ["block", "layers re-run", "replay ms", "full forward ms", "full / replay", "relative loss difference"],
                 rows, caption="Median of --repeats; the variant, the fold and the removal are inside both timings.")
    t0 = time.perf_counter()
    apply_method(model, adapter, resolved, 1, stats)
    select_s = time.perf_counter() - t0
    report.table("calibration-loss selection vs the shared pass",
                 ["candidates", "shared pass s", "select + compensate + merge s", "ratio"],
                 [[L - 1, pass_s, select_s, select_s / pass_s]])
    report.save()


if __name__ == "__main__":
    main()
