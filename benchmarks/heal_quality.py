"""Healing quality: training-free vs healed, per method, layer budget and healer (stories260K).

One calibration pass for every method (``valid.txt[:2000]``); each method prunes a
variant of the shared model, which is measured training-free and then healed with
each healer, distilling from the unpruned model in memory (``kd``), on the healing
text ``valid.txt[:3000]`` (never the evaluation text) with the healers' defaults
(300 steps of 16 x 128 tokens). Perplexity on the held-out ``valid.txt[3000:]``
(first ``--ppl-tokens`` tokens, 256-token windows).

    python benchmarks/heal_quality.py                                  # the README table
    python benchmarks/heal_quality.py -m uidl -n 2 --healers full --steps 100

The same from the command line, one table with training-free and healed rows:

    replaceme compare <shared>/models/stories260K -n 1,2 -m uidl -m replaceme-lstsq-loss \\
        --heal lora --heal full --calib '<shared>/data/tinystories/valid.txt[:2000]' \\
        --heal-data '<shared>/data/tinystories/valid.txt[:3000]' --ppl '<shared>/data/tinystories/valid.txt[3000:]'
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, require_shared  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--methods", action="append",
                        help="methods (default: uidl, replaceme-lstsq-loss, replaceme-lstsq, llm-streamline)")
    parser.add_argument("-n", "--layers", type=int, action="append", help="layer budgets (default 1 and 2)")
    parser.add_argument("--healers", default="lora,transform,full")
    parser.add_argument("--steps", type=int, default=None, help="override every healer's steps")
    parser.add_argument("--lr", type=float, default=None, help="override every healer's learning rate")
    parser.add_argument("--ppl-tokens", type=int, default=50_000)
    parser.add_argument("--name", default="heal_quality")
    args = parser.parse_args()
    model_dir = require_shared("models", "stories260K")
    data = require_shared("data", "tinystories", "valid.txt")

    import torch

    from replaceme.calibration import CalibrationSpec
    from replaceme.data.texts import load_texts
    from replaceme.evaluation.perplexity import perplexity
    from replaceme.healer import HealData
    from replaceme.healing.run import heal_outcome
    from replaceme.loading import load_model
    from replaceme.methods import resolve_method
    from replaceme.pipeline import Run, apply_method, prepare
    from replaceme.registry import adapter_for
    from replaceme.variant import VARIANT

    torch.manual_seed(0)
    report = Report(args.name, False, vars(args))
    methods = args.methods or ["uidl", "replaceme-lstsq-loss", "replaceme-lstsq", "llm-streamline"]
    budgets = args.layers or [1, 2]
    healers = [h for h in args.healers.split(",") if h]
    model, tokenizer = load_model(str(model_dir), device="cpu", dtype="float32")
    adapter = adapter_for(model)
    texts = [t for t in load_texts(f"{data}[3000:]") if isinstance(t, str)]

    def ppl(m) -> float:
        return perplexity(m, tokenizer, texts, context_length=256, max_tokens=args.ppl_tokens).ppl

    base = ppl(model)
    runs = [Run(resolve_method(m), n) for m in methods for n in budgets]
    spec = CalibrationSpec(f"{data}[:2000]", seed=0)
    prepared = prepare(model, adapter, runs, spec, tokenizer, seed=0)
    heal_data = HealData(f"{data}[:3000]")
    rows = []
    for run in runs:
        outcome = apply_method(model, adapter, run.method, run.layers, prepared.stats, seed=0, target=VARIANT)
        free = ppl(outcome.model)
        print(f"{run.method.label} -{run.layers}: training-free {free:.2f}", flush=True)
        row = [run.method.label, run.layers, str(outcome.plan.blocks[0]) if outcome.plan.blocks else "", free]
        for name in healers:
            opts = {f"heal.{k}": v for k, v in (("steps", args.steps), ("lr", args.lr)) if v is not None}
            method = resolve_method(run.method.method.name, opts, healer=name)
            variant = apply_method(model, adapter, method, run.layers, prepared.stats, seed=0, target=VARIANT)
            t0 = time.perf_counter()
            healed, record = heal_outcome(model, adapter, method, variant, tokenizer, heal_data,
                                          calibration=spec, request=prepared.request, seed=0, resume=False)
            seconds = time.perf_counter() - t0
            value = ppl(healed)
            print(f"  +{name}: {value:.2f} ({seconds:.0f} s, {record.state.tokens_seen} tokens)", flush=True)
            row += [value, seconds]
        rows.append(row)
    columns = ["method", "-n", "block", "training-free"]
    for name in healers:
        columns += [f"+{name}", f"{name} s"]
    steps = ("" if args.steps is None else f", {args.steps} steps") + ("" if args.lr is None else f", lr {args.lr}")
    caption = (f"stories260K, unpruned perplexity {base:.2f} on valid.txt[3000:] (first {args.ppl_tokens} tokens); "
               f"healing: kd from the unpruned model, healers' defaults{steps}, text valid.txt[:3000]")
    report.table("Healing quality", columns, rows, caption)
    report.save({"base_ppl": base})


if __name__ == "__main__":
    main()
