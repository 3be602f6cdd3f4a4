"""Which block to remove: distance proxies against what the model actually loses.

On stories260K, for 1 and 2 layers removed, every candidate block is pruned with
ReplaceMe's LSTSQ map (``-m replaceme-lstsq --selector range -o start S``) and its
perplexity measured on held-out TinyStories text (``valid.txt[3000:]``, the first
``--ppl-tokens`` tokens, 256-token windows). Beside it: the block's angular
distance (what ``replaceme-lstsq`` selects by) and the ``calibration-loss``
selector's score (held-out *calibration* batches, default calibration settings),
so the table shows whether each selector finds the block that held-out text rewards.

    python benchmarks/block_choice.py                 # ~1-2 min on 2 cores
    python benchmarks/block_choice.py --calib-samples 64
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calib-samples", type=int, default=256, help="calibration records (CLI default 256)")
    p.add_argument("--ppl-tokens", type=int, default=50000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    model_dir = common.require_shared("models", "stories260K")
    valid = common.require_shared("data", "tinystories", "valid.txt")
    import torch

    import replaceme
    from replaceme.calibration import CalibrationSpec
    from replaceme.data.texts import load_texts
    from replaceme.evaluation.perplexity import perplexity
    from replaceme.loading import load_model

    common.quiet()
    torch.set_num_threads(args.threads)
    report = common.Report("block_choice", False, vars(args))
    base, tok = load_model(str(model_dir), device="cpu", dtype="float32")
    held_out = load_texts(f"{valid}[3000:]")
    spec = CalibrationSpec(str(valid), samples=args.calib_samples)
    rows = []
    for n in (1, 2):
        chosen = {}
        for method, selector in (("replaceme-lstsq", None), ("replaceme-lstsq", "calibration-loss")):
            r = replaceme.prune(copy.deepcopy(base), method=method, selector=selector, layers=n, calibration=spec,
                                tokenizer=tok)
            chosen[selector or "angular-distance"] = r.plan.blocks[0]
            if selector:
                scores = {tuple(c["block"]): c for c in r.plan.details["candidates"]}
        for s in range(1, 6 - n):
            r = replaceme.prune(copy.deepcopy(base), method="replaceme-lstsq", selector="range", layers=n,
                                calibration=spec, tokenizer=tok, start=s)
            ppl = perplexity(r.model, tok, held_out, max_tokens=args.ppl_tokens).ppl
            c = scores[(s, s + n)]
            picks = " ".join(k for k, b in chosen.items() if (b.start, b.end) == (s, s + n))
            rows.append([n, f"[{s}, {s + n})", c["angular_distance"], c["ppl"], c["kl"], ppl, picks])
    report.table(
        "stories260K: every candidate block after LSTSQ",
        ["layers", "block", "angular distance", "calib. held-out ppl (selector score)", "calib. held-out KL",
         "ppl valid.txt[3000:]", "chosen by"],
        rows,
        caption=f"Calibration: valid.txt, {args.calib_samples} records, 512 tokens, batches of 8 (CLI defaults); "
                "the selector scores on the shared pass's held-out batches (a tenth of the batches, at most 8192 tokens).",
    )
    report.save()


if __name__ == "__main__":
    main()
