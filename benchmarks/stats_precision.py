"""How much precision the statistics pass needs: float64 Gram sums vs per-batch
float32 products added into float64 sums ("float32 batches", the fast path of a
GPU) vs float32 throughout, and the same for the mean token cosine.

For each source of activations the script accumulates ``XᵀX`` and ``XᵀY`` over
batches three ways, solves the LSTSQ map ``T`` from each (same solver as the
``lstsq`` compensator) and reports relative errors against pure float64:
``‖A − A₆₄‖/‖A₆₄‖`` for the sums and for ``T``, with the condition number of ``XᵀX``.

Sources:
- ``random``: Gaussian ``X`` with a spectrum decaying over 6 decades (condition
  ~1e12 in XᵀX, like real MLP outputs), ``Y = X T₀ + noise``;
- ``stories260K``: the real model's ``m_{s-1}`` and ``Y`` for its best block,
  from the shared pass (skipped when ../shared is absent).

    python benchmarks/stats_precision.py
    python benchmarks/stats_precision.py --quick
"""

from __future__ import annotations

import argparse

from _common import Report, shared_dir


def accumulate(batches, mode: str):
    import torch

    h = batches[0][0].shape[1]
    xtx = torch.zeros(h, h, dtype=torch.float64)
    xty = torch.zeros(h, h, dtype=torch.float64)
    if mode == "float32":
        xtx, xty = xtx.float(), xty.float()
    for X, Y in batches:
        if mode == "float64":
            X, Y = X.double(), Y.double()
            xtx += X.T @ X
            xty += X.T @ Y
        elif mode == "float32-batches":
            X, Y = X.float(), Y.float()
            xtx += (X.T @ X).double()
            xty += (X.T @ Y).double()
        else:
            X, Y = X.float(), Y.float()
            xtx += X.T @ X
            xty += X.T @ Y
    return xtx.double(), xty.double()


def random_batches(h: int, tokens: int, batch: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -6, h, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(h, h, generator=gen, dtype=torch.float64))
    t0 = torch.eye(h, dtype=torch.float64) + 0.1 * torch.randn(h, h, generator=gen, dtype=torch.float64)
    out = []
    for _ in range(tokens // batch):
        X = (torch.randn(batch, h, generator=gen, dtype=torch.float64) * scales) @ basis.T
        Y = X @ t0 + 1e-3 * torch.randn(batch, h, generator=gen, dtype=torch.float64)
        out.append((X.float(), Y.float()))  # activations arrive in the model's dtype
    return out


def stories_batches(samples: int):
    import torch

    from replaceme.registry import adapter_for
    from replaceme.calibration import CalibrationSpec, build_calibration
    from replaceme.loading import load_model
    from replaceme.stats import StatsRequest, collect_stats

    base = shared_dir()
    if base is None or not (base / "models" / "stories260K").is_dir():
        return None, None
    model, tok = load_model(str(base / "models" / "stories260K"), device="cpu", dtype="float32")
    adapter = adapter_for(model)
    calib = build_calibration(CalibrationSpec(f"{base}/data/tinystories/valid.txt[:2000]", samples=samples,
                                              max_length=256, batch_size=8), tok)
    s, e = 2, 3
    stats = collect_stats(model, adapter, calib, StatsRequest(sample_tokens=10**9, sample_mlp={s - 1},
                                                              sample_boundaries={s, e}), holdout_tokens=0)
    out = []
    for b in stats.sample.train:
        X = b.mlp[s - 1][b.mask]
        Y = b.boundaries[e][b.mask] - b.boundaries[s][b.mask] + X
        out.append((X, Y))
    # also the token-cosine table of the pass, float32 vs float64
    cos = []
    for b in stats.sample.train:
        a, c = b.boundaries[s][b.mask], b.boundaries[e][b.mask]
        c64 = torch.nn.functional.cosine_similarity(a.double(), c.double(), dim=-1).sum()
        c32 = torch.nn.functional.cosine_similarity(a.float(), c.float(), dim=-1).double().sum()
        cos.append((float(c64), float(c32), int(b.mask.sum())))
    return out, cos


def main() -> None:
    import torch

    from replaceme_linear.lstsq_solve import solve_lstsq

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--batch", type=int, default=4096, help="tokens per batch (8 × 512)")
    args = p.parse_args()
    if args.quick:
        args.hidden, args.tokens = 128, 16384
    torch.set_num_threads(2)
    report = Report("stats_precision", args.quick, vars(args))
    sources = {"random": random_batches(args.hidden, args.tokens, args.batch, 0)}
    stories, cos = stories_batches(64 if args.quick else 512)
    if stories is not None:
        sources["stories260K [2,3)"] = stories
    rows = []
    for name, batches in sources.items():
        ref_xtx, ref_xty = accumulate(batches, "float64")
        ref = solve_lstsq(ref_xtx, ref_xty)
        for mode in ("float32-batches", "float32"):
            xtx, xty = accumulate(batches, mode)
            sol = solve_lstsq(xtx, xty)
            rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
            rows.append([name, sum(x.shape[0] for x, _ in batches), batches[0][0].shape[1], f"{ref.condition:.2e}", mode,
                         f"{rel(xtx, ref_xtx):.1e}", f"{rel(xty, ref_xty):.1e}", f"{rel(sol.transform, ref.transform):.1e}",
                         sol.ridge != ref.ridge])
    report.table("Gram sums: per-batch float32 products (into float64 sums) and float32 throughout, vs float64",
                 ["source", "tokens", "hidden", "cond(XᵀX)", "mode", "rel err XᵀX", "rel err XᵀY", "rel err T",
                  "ridge changed"], rows,
                 caption="rel err = ‖A − A64‖/‖A64‖; T solved by the lstsq compensator's solver (Cholesky, auto ridge).")
    if cos:
        tokens = sum(c[2] for c in cos)
        mean64, mean32 = sum(c[0] for c in cos) / tokens, sum(c[1] for c in cos) / tokens
        report.table("Mean token cosine cos(x_2, x_3) on stories260K: float32 per token vs float64",
                     ["tokens", "float64", "float32", "abs diff"], [[tokens, f"{mean64:.12f}", f"{mean32:.12f}",
                                                                     f"{abs(mean64 - mean32):.1e}"]])
    report.save()


if __name__ == "__main__":
    main()
