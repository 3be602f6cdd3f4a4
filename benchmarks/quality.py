"""Quality of every method after pruning, through ``replaceme.compare.runner.run_comparison``.

Two subjects, each with 1 and 2 layers removed and the unpruned baseline:

1. stories260K (the real pretrained model in the shared folder): calibrated on
   TinyStories ``valid.txt[:2000]``, perplexity on the held-out ``valid.txt[3000:]``
   (in domain) and on WikiText-2 ``wiki.test.raw`` (out of domain), plus the offline
   task pack (boolq, piqa, hellaswag, arc_easy, winogrande; ``--limit`` documents
   each). stories260K is far too small for these tasks: expect chance-level accuracy
   (the task columns test the evaluation machinery, not the methods).
2. the embedded demo subject (``replaceme compare`` with no model): its own held-out
   calibration and validation files, perplexity only.

The same runs from the command line (one table each, plus the baseline):

    replaceme compare <shared>/models/stories260K -n 1,2 \\
        -m block-removal -m uidl -m replaceme-lstsq -m replaceme-cosine -m llm-streamline \\
        --calib '<shared>/data/tinystories/valid.txt[:2000]' --calib-samples 512 --max-length 256 \\
        --ppl '<shared>/data/tinystories/valid.txt[3000:]' --ppl <shared>/data/wikitext-2-raw/wiki.test.raw \\
        --max-ppl-tokens 200000 --tasks boolq,piqa,hellaswag,arc_easy,winogrande --task-data <shared>/data \
        --limit 200 --no-cache
    replaceme compare -n 1,2 -m block-removal -m uidl -m replaceme-lstsq -m replaceme-cosine -m llm-streamline --no-cache

    python benchmarks/quality.py            # both subjects (~5 min on 2 cores; the demo model is built on first use)
    python benchmarks/quality.py --quick    # fewer samples, no tasks, WikiText capped
    python benchmarks/quality.py --subjects stories   # skip the demo subject

An extra row, ``cosine-lbfgs`` (``replaceme-cosine -o solver lbfgs``), is added by default
to show how much of the cosine method's result is due to its optimiser (see README).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

METHODS = ["block-removal", "uidl", "replaceme-lstsq", "replaceme-cosine", "llm-streamline"]
TASKS = "boolq,piqa,hellaswag,arc_easy,winogrande"


def run(plan, threads: int):
    import torch

    from replaceme.compare.runner import run_comparison

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    outcome = run_comparison(plan, None, use_cache=False)
    return outcome, time.perf_counter() - t0


def diagnostics(row) -> dict:
    """Held-out residuals of a linear map / validation MSE of a trained layer, when recorded."""
    comps = (row.details.get("outcome") or {}).get("compensations") or []
    out = {}
    for c in comps:
        d = c.get("diagnostics") or {}
        for key in ("heldout_rel_residual", "identity_rel_residual", "heldout_cosine", "identity_cosine",
                    "train_rel_residual", "train_identity_rel_residual", "condition_number", "auto_ridge",
                    "loss_first", "loss_last", "val_mse_removal", "val_mse_init", "val_mse_best", "improved"):
            if key in d:
                out[key] = d[key]
    return out


def tables(report, title: str, outcome, seconds: float, ppl_keys: list[str], tasks: list[str]) -> None:
    rows = outcome.rows
    base = next(r for r in rows if r.method == "baseline")
    cols = ["method", "-n", "blocks"]
    names = {k: "ppl " + Path(k[4:].split("[")[0]).name + (("[" + k.split("[", 1)[1]) if "[" in k else "") for k in ppl_keys}
    for k in ppl_keys:
        cols += [names[k], "% ret."]
    if tasks:
        cols += tasks + ["task avg", "% ret."]
    cols += ["prune s"]
    out = []
    for r in rows:
        if r.error:
            out.append([r.label, r.layers, f"ERROR {r.error}"] + [None] * (len(cols) - 3))
            continue
        row = [r.label, r.layers, r.blocks or "-"]
        for k in ppl_keys:
            row += [r.metrics.get(k), 100.0 * base.metrics[k] / r.metrics[k] if r.metrics.get(k) else None]
        if tasks:
            accs = [r.metrics.get(t) for t in tasks]
            avg = sum(accs) / len(accs) if all(a is not None for a in accs) else None
            bavg = sum(base.metrics[t] for t in tasks) / len(tasks)
            row += accs + [avg, 100.0 * avg / bavg if avg else None]
        row += [r.prune_seconds]
        out.append(row)
    stats = outcome.provenance.get("statistics", {})
    report.table(title, cols, out,
                 caption=f"% ret. = baseline/ppl (perplexity) or acc/baseline acc (tasks), ×100. Shared calibration "
                         f"pass: {stats.get('tokens')} tokens, {stats.get('seconds', 0):.1f} s; whole comparison "
                         f"{seconds:.0f} s.")
    diag_rows = []
    for r in rows:
        if r.method == "baseline" or r.error:
            continue
        d = diagnostics(r)
        if d:
            diag_rows.append([r.label, r.layers, r.blocks, json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                                                      for k, v in d.items()})])
    if diag_rows:
        report.table(f"{title}: compensation diagnostics (held-out calibration batches)",
                     ["method", "-n", "blocks", "diagnostics"], diag_rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="128 calibration samples, no tasks, 50k WikiText tokens")
    p.add_argument("--subjects", default="stories,demo", help="stories and/or demo")
    p.add_argument("--layers", default="1,2")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--max-length", type=int, default=256, help="calibration tokens per sequence (stories260K)")
    p.add_argument("--demo-max-length", type=int, default=128, help="as replaceme compare uses for the demo")
    p.add_argument("--tasks", default=TASKS, help="offline task pack tasks ('' for none)")
    p.add_argument("--limit", type=int, default=200, help="documents per task")
    p.add_argument("--max-ppl-tokens", type=int, default=200_000,
                   help="score at most this many tokens per perplexity source (WikiText-2 test has ~805k with this "
                        "tokenizer; the TinyStories slice ~38k); 0 = all")
    p.add_argument("--no-lbfgs-row", action="store_true",
                   help="skip the extra 'cosine-lbfgs' row (replaceme-cosine with -o solver lbfgs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.calib_samples, args.tasks, args.max_ppl_tokens = 128, "", 50_000
    args.max_ppl_tokens = args.max_ppl_tokens or None

    common.quiet()
    from replaceme.calibration import CalibrationSpec
    from replaceme.compare.plan import ComparePlan, MethodEntry, parse_layers
    from replaceme.evaluation.spec import EvalSpec

    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    layers = parse_layers(args.layers)
    methods = [MethodEntry(m.strip()) for m in args.methods.split(",") if m.strip()]
    if not args.no_lbfgs_row:  # investigation row: the same cosine objective, solved to convergence
        methods.append(MethodEntry("replaceme-cosine", label="cosine-lbfgs", options={"solver": "lbfgs"}))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    report = common.Report("quality", args.quick, vars(args))
    results = {}

    base = common.shared_dir()
    if "stories" in subjects and not (base and (base / "models" / "stories260K").is_dir()):
        report.note("stories260K skipped: no shared models/stories260K (REPLACEME_SHARED or ../shared)")
        subjects.remove("stories")
    if "stories" in subjects:
        model = common.require_shared("models", "stories260K")
        data = common.require_shared("data")
        valid = data / "tinystories" / "valid.txt"
        ppl = [f"{valid}[3000:]", str(data / "wikitext-2-raw" / "wiki.test.raw")]
        plan = ComparePlan(
            model=str(model), methods=methods, layers=layers,
            calibration=CalibrationSpec(f"{valid}[:2000]", samples=args.calib_samples, max_length=args.max_length,
                                        batch_size=8, seed=args.seed),
            evaluation=EvalSpec(ppl=ppl, context_length=256, max_ppl_tokens=args.max_ppl_tokens, tasks=tasks,
                                task_data=str(data) if tasks else None, limit=args.limit if tasks else None,
                                seed=args.seed, device="cpu", dtype="float32"),
            seed=args.seed, device="cpu", dtype="float32",
        )
        outcome, seconds = run(plan, args.threads)
        task_keys = [t for t in tasks if any(t in r.metrics for r in outcome.rows)]
        tables(report, "stories260K (5 layers)", outcome, seconds, [f"ppl:{s}" for s in ppl], task_keys)
        results["stories260K"] = [r.to_dict() for r in outcome.rows]
        if tasks:
            report.note("stories260K is at chance on the task pack (boolq 2-way ≈ majority class, piqa/winogrande 50%, "
                        "hellaswag/arc_easy 25%); those columns check the evaluation, not the methods.")

    if "demo" in subjects:
        try:
            from replaceme.demo import demo_data_files, demo_model_dir
        except ImportError as exc:
            report.note(f"demo subject skipped: replaceme.demo is not importable ({exc})")
        else:
            t0 = time.perf_counter()
            model_dir = demo_model_dir()
            build = time.perf_counter() - t0
            files = demo_data_files(model_dir)
            plan = ComparePlan(
                model=str(model_dir), methods=methods, layers=layers,
                calibration=CalibrationSpec(str(files["calibration"]), samples=args.calib_samples,
                                            max_length=args.demo_max_length, batch_size=8, seed=args.seed),
                evaluation=EvalSpec(ppl=[str(files["validation"])], context_length=256,
                                    max_ppl_tokens=args.max_ppl_tokens, seed=args.seed, device="cpu", dtype="float32"),
                seed=args.seed, device="cpu", dtype="float32",
            )
            outcome, seconds = run(plan, args.threads)
            layers_before = outcome.provenance.get("layers_before")
            tables(report, f"demo subject ({layers_before} layers; model ready in {build:.0f} s)", outcome, seconds,
                   [f"ppl:{files['validation']}"], [])
            results["demo"] = [r.to_dict() for r in outcome.rows]
    report.save({"rows": results})


if __name__ == "__main__":
    main()
