"""The estimation step alone: LSTSQ by Cholesky vs an explicit inverse; cosine by Adam vs L-BFGS;
and the memory of the cosine token sample against the reference's unbounded buffers.

1. LSTSQ. ``T = (XᵀX)⁻¹ XᵀY`` from float64 normal equations, by
   - ``solve_lstsq`` (the library: Cholesky + two triangular solves; a ridge is added
     automatically when ``cond(XᵀX) > max_condition``, default 1e10), also with the
     automatic ridge off (``max_condition=inf``), and
   - the reference's explicit inverse ``torch.linalg.inv(XᵀX) @ XᵀY`` (float64, and the
     same in float32),
   against the planted ``T`` (``Y = X T`` exactly, so the least-squares solution IS the
   planted T and any error is numerical) and against ``torch.linalg.lstsq`` on the
   tokens themselves (QR in float64, which never squares the condition number).
   Synthetic ``X`` with prescribed singular values (cond(X) = 1, 1e3, 1e6, i.e.
   cond(XᵀX) up to 1e12) at hidden 64..1024, plus real activations of stories260K.
2. Cosine. ``fit_transform`` with the reference settings (Adam, lr 1e-4, 1024-token
   batches, 10 epochs, from T = I) vs L-BFGS (100 iterations, strong Wolfe), final
   ``1 − cos(XT, Y)`` on a held-out split, on real stories260K activations (the
   shared pass's bounded sample and its held-out batches) and on synthetic data.
3. Memory of the activations the cosine estimator needs (computed, not measured).

    python benchmarks/solvers.py            # ~3 min on 2 cores
    python benchmarks/solvers.py --quick
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402


def rel(a, b) -> float:
    import torch

    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-300))


def timed(fn, repeats: int = 3):
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


# ----------------------------------------------------------------------------- LSTSQ


def synthetic_x(n: int, h: int, cond_x: float, gen):
    """``[n, h]`` float64 with singular values log-spaced from 1 to 1/cond_x, random singular vectors."""
    import torch

    u, _ = torch.linalg.qr(torch.randn(n, h, dtype=torch.float64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(h, h, dtype=torch.float64, generator=gen))
    s = torch.logspace(0, -math.log10(cond_x), h, dtype=torch.float64) * math.sqrt(n)
    return (u * s) @ v.T


def lstsq_solvers():
    import torch

    from replaceme_linear.lstsq_solve import solve_lstsq

    return {
        "cholesky (solve_lstsq, default)": lambda a, b: solve_lstsq(a, b).transform,
        "cholesky, no auto ridge": lambda a, b: solve_lstsq(a, b, max_condition=math.inf).transform,
        "inverse float64 (reference)": lambda a, b: torch.linalg.inv(a) @ b,
        "inverse float32": lambda a, b: (torch.linalg.inv(a.float()) @ b.float()).double(),
    }


def lstsq_case(report_rows, label, x, y, t_true, solvers, repeats):
    """Add one row per solver: error vs planted T, vs lstsq on tokens, relative residual, time."""
    import torch

    from replaceme_linear.lstsq_solve import condition_number

    a, b = x.T @ x, x.T @ y
    cond = condition_number(a)
    t_ref = torch.linalg.lstsq(x, y, driver="gelsd").solution  # SVD-based, float64, on the tokens
    ref_res = rel(x @ t_ref, y)
    for name, fn in solvers.items():
        try:
            t, secs = timed(lambda: fn(a, b), repeats)
            ok = bool(torch.isfinite(t).all())
        except Exception as exc:  # inverse of a singular matrix, ...
            report_rows.append([label, x.shape[1], cond, name, None, None, None, None, f"{type(exc).__name__}"])
            continue
        report_rows.append([
            label, x.shape[1], cond, name,
            rel(t, t_true) if t_true is not None else None,
            rel(t, t_ref),
            rel(x @ t, y) if ok else None,
            secs * 1e3,
            "" if ok else "non-finite",
        ])
    report_rows.append([label, x.shape[1], cond, "lstsq on tokens (SVD, reference)",
                        rel(t_ref, t_true) if t_true is not None else None, 0.0, ref_res, None, ""])


def real_block_tokens(model_dir: Path, calib_src: str, samples: int, max_length: int, n: int, budget: int):
    """stories260K activations of the block replaceme-cosine selects: (block, train (m, xs, xe), held-out (m, xs, xe))."""
    import torch

    from replaceme.registry import adapter_for
    from replaceme.calibration import CalibrationSpec, build_calibration
    from replaceme.loading import load_model
    from replaceme.methods import resolve_method
    from replaceme.stats.collect import collect_stats
    from replaceme_linear.diagnostics import block_tokens

    model, tok = load_model(str(model_dir), device="cpu", dtype="float32")
    adapter = adapter_for(model)
    L = adapter.num_layers(model)
    method = resolve_method("replaceme-cosine", {"token_budget": budget})
    calib = build_calibration(CalibrationSpec(calib_src, samples=samples, max_length=max_length, seed=0), tok)
    with torch.no_grad():
        stats = collect_stats(model, adapter, calib, method.stats_request(L, n))
    block = method.selector.select(stats, method.selection_context(L, n)).blocks[0]
    train = block_tokens(stats.sample.take(budget), block.start, block.end)
    held = block_tokens(stats.sample.holdout, block.start, block.end)
    return block, train, held


# ----------------------------------------------------------------------------- cosine


def cosine_loss(x, y, t) -> float:
    import torch

    pred = x @ t.to(x.dtype)
    return float((1.0 - torch.nn.functional.cosine_similarity(pred, y, dim=-1, eps=1e-8)).mean())


def cosine_case(rows, label, x_tr, y_tr, x_ho, y_ho, lbfgs_steps, epochs):
    import torch

    from replaceme_linear.cosine_solve import fit_transform
    from replaceme_linear.lstsq_solve import solve_lstsq

    x_tr, y_tr = x_tr.float(), y_tr.float()
    h = x_tr.shape[1]
    eye = torch.eye(h)
    rows.append([label, h, x_tr.shape[0], x_ho.shape[0], "identity (plain removal)", None, None,
                 cosine_loss(x_tr, y_tr, eye), cosine_loss(x_ho, y_ho, eye), 0.0])
    x64 = x_tr.double()
    t0 = time.perf_counter()
    t_ls = solve_lstsq(x64.T @ x64, x64.T @ y_tr.double()).transform.float()
    rows.append([label, h, x_tr.shape[0], x_ho.shape[0], "LSTSQ (Gram + Cholesky)", None, None,
                 cosine_loss(x_tr, y_tr, t_ls), cosine_loss(x_ho, y_ho, t_ls), time.perf_counter() - t0])
    for name, kw in (
        (f"Adam lr 1e-4, 1024-token batches, {epochs} epochs (reference)", dict(solver="adam", epochs=epochs, lr=1e-4, batch_tokens=1024)),
        (f"L-BFGS {lbfgs_steps} iterations, strong Wolfe", dict(solver="lbfgs", lbfgs_steps=lbfgs_steps)),
    ):
        t0 = time.perf_counter()
        fit = fit_transform(x_tr, y_tr, seed=0, **kw)
        secs = time.perf_counter() - t0
        rows.append([label, h, x_tr.shape[0], x_ho.shape[0], name, fit.steps, fit.history[-1] if fit.history else None,
                     cosine_loss(x_tr, y_tr, fit.transform), cosine_loss(x_ho, y_ho, fit.transform), secs])


# ----------------------------------------------------------------------------- memory


def memory_rows(budget: int, holdout: int):
    """(shape, n): reference buffers at 8000×1024 tokens vs our bounded sample, from the method's own request."""
    from replaceme.methods import resolve_method

    rows = []
    tokens_ref = 8000 * 1024
    for shape, h, L, n in (("Llama-2-7B / Llama-3-8B", 4096, 32, 8), ("Llama-2-7B / Llama-3-8B", 4096, 32, 1),
                           ("Llama-3-70B", 8192, 80, 20)):
        req = resolve_method("replaceme-cosine", {"token_budget": budget}).stats_request(L, n)
        stored = len(req.sample_mlp) + len(req.sample_boundaries)
        gib = 1e9  # decimal GB, as the paper and GUIDE quote (≈67 GB)
        ref_fp32 = tokens_ref * h * 4 / gib
        ref_bf16 = tokens_ref * h * 2 / gib
        ours_matrix = budget * h * 2 / gib
        ours_total = budget * h * 2 * stored / gib
        ours_holdout = holdout * h * 2 * stored / gib
        rows.append([shape, h, L, n, ref_fp32, ref_bf16, 2 * ref_bf16, ours_matrix, stored, ours_total, ours_holdout,
                     (2 * ref_bf16) / (ours_total + ours_holdout)])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--hidden", default="64,256,1024", help="hidden sizes of the synthetic LSTSQ problems")
    p.add_argument("--conds", default="1,1e3,1e6", help="condition numbers of X (cond(XᵀX) is the square)")
    p.add_argument("--tokens-per-hidden", type=int, default=8, help="synthetic tokens N = this × hidden")
    p.add_argument("--calib-samples", type=int, default=512, help="stories260K calibration sequences (real activations)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--token-budget", type=int, default=65536, help="cosine token sample (library default 65536)")
    p.add_argument("--cos-hidden", type=int, default=256, help="hidden size of the synthetic cosine problem")
    p.add_argument("--cos-tokens", type=int, default=32768)
    p.add_argument("--lbfgs-steps", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.quick:
        args.hidden, args.calib_samples, args.cos_tokens, args.cos_hidden = "64,256", 128, 8192, 128
    import torch

    common.quiet()
    torch.set_num_threads(args.threads)
    report = common.Report("solvers", args.quick, vars(args))

    # 1. LSTSQ -------------------------------------------------------------------------
    rows: list[list] = []
    solvers = lstsq_solvers()
    gen = torch.Generator().manual_seed(0)
    for h in [int(v) for v in args.hidden.split(",")]:
        for cond_x in [float(v) for v in args.conds.split(",")]:
            x = synthetic_x(args.tokens_per_hidden * h, h, cond_x, gen)
            t_true = torch.randn(h, h, dtype=torch.float64, generator=gen) / math.sqrt(h)
            lstsq_case(rows, f"synthetic cond(X)={cond_x:.0e}", x, x @ t_true, t_true, solvers, 3 if h <= 256 else 1)
    base = common.shared_dir()
    model_dir = base / "models" / "stories260K" if base else None
    valid = base / "data" / "tinystories" / "valid.txt" if base else None
    real = {}
    if not (model_dir and model_dir.is_dir() and valid.is_file()):
        report.note("stories260K or TinyStories not found (set REPLACEME_SHARED): real-activation rows skipped")
    for n in (1, 2) if model_dir and model_dir.is_dir() and valid.is_file() else ():
        block, train, held = real_block_tokens(model_dir, f"{valid}[:2000]", args.calib_samples, args.max_length, n,
                                               args.token_budget)
        real[n] = (block, train, held)
        m, xs, xe = (a.double() for a in train)
        lstsq_case(rows, f"stories260K block {block}", m, xe - xs + m, None, solvers, 3)
    report.table(
        "LSTSQ: Cholesky vs explicit inverse (float64 normal equations unless noted)",
        ["data", "hidden", "cond(XᵀX)", "solver", "‖T−T_planted‖/‖T_planted‖", "‖T−T_svd‖/‖T_svd‖", "‖XT−Y‖/‖Y‖",
         "solve ms", "note"],
        rows,
        caption=f"Synthetic: N = {args.tokens_per_hidden}×hidden tokens, Y = X·T_planted exactly. Real: stories260K "
                f"activations (m_(s-1) → x_e − x_s + m_(s-1)) of the angular-distance block, {args.calib_samples} "
                "TinyStories sequences. T_svd = torch.linalg.lstsq(X, Y, driver='gelsd') on the tokens in float64. "
                "solve ms excludes forming XᵀX, XᵀY (done once in the shared pass); solve_lstsq's time includes its "
                "eigenvalue-based condition estimate.",
    )

    # 2. cosine ------------------------------------------------------------------------
    crow: list[list] = []
    for n, (block, train, held) in real.items():
        m, xs, xe = (a.float() for a in train)
        hm, hxs, hxe = (a.float() for a in held)
        cosine_case(crow, f"stories260K block {block}", m, xe - xs + m, hm, hxe - hxs + hm, args.lbfgs_steps, args.epochs)
    gen = torch.Generator().manual_seed(1)
    h, ntok = args.cos_hidden, args.cos_tokens
    x = synthetic_x(ntok + ntok // 8, h, 1e2, gen).float()
    t_true = torch.eye(h) + 0.3 * torch.randn(h, h, generator=gen) / math.sqrt(h)
    y = x @ t_true + 0.3 * x.std() * torch.randn(x.shape, generator=gen)
    cosine_case(crow, "synthetic (T = I + noise, 30% token noise)", x[:ntok], y[:ntok], x[ntok:], y[ntok:],
                args.lbfgs_steps, args.epochs)
    report.table(
        "Cosine estimator: Adam (reference settings) vs L-BFGS, from T = I",
        ["data", "hidden", "train tokens", "held-out tokens", "solver", "steps", "last train loss",
         "train 1−cos", "held-out 1−cos", "seconds"],
        crow,
        caption="Loss = mean over tokens of 1 − cos(XT, Y), Y = x_e − x_s + m_(s-1). Held-out = the shared pass's "
                "held-out calibration batches (real) or a 1/8 split (synthetic). Adam 'steps' = optimiser steps; "
                "L-BFGS 'steps' = loss/gradient evaluations.",
    )

    # 3. memory ------------------------------------------------------------------------
    mrows = memory_rows(args.token_budget, 8192)
    report.table(
        "Cosine estimator memory: the reference's buffers vs the bounded sample (computed)",
        ["model", "hidden", "L", "n", "ref. per matrix fp32 GB", "ref. per matrix bf16 GB", "ref. X+Y bf16 GB",
         "ours per matrix GB", "matrices stored", "ours sample GB", "ours held-out GB", "ref. X+Y / ours"],
        mrows,
        caption="Reference: every calibration token kept, 8000 × 1024 = 8,192,000 tokens × hidden × bytes per "
                f"matrix (X and Y; a third for the accurate variant). Ours: token_budget = {args.token_budget} tokens × "
                "hidden × 2 bytes (bf16 model) per stored matrix; the shared pass stores m_(s-1), x_s and x_e of EVERY "
                "candidate block (selection happens after the pass), hence 'matrices stored' = |{s-1}| + |{s} ∪ {s+n}| "
                "from replaceme-cosine's own stats_request; plus up to 8192 held-out tokens of the same matrices. "
                "Padded positions are stored too (whole [B, T, h] batches).",
    )
    report.save()


if __name__ == "__main__":
    main()
