"""Which cosine estimator settings converge, on small and large calibration sets.

Runs ``replaceme compare`` with the plans in ``benchmarks/plans/`` (LSTSQ, and
``replaceme-cosine`` under the reference recipe, L-BFGS from T = I, and Adam or
L-BFGS started from the LSTSQ map) on stories260K and on the demo model, each
with 64 and 2,000 calibration records, then tabulates held-out perplexity with
the fit's own numbers from ``pruning`` diagnostics: train 1 − cos before and
after, held-out 1 − cos, optimiser steps and seconds.

    python benchmarks/cosine_default.py                    # ~15 min on 2 cores
    python benchmarks/cosine_default.py --runs runs/cosine # where compare writes (re-running resumes)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

SUBJECTS = {"stories260K": "cosine_stories.yaml", "demo": "cosine_demo.yaml"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/cosine", help="output directory of the compare runs")
    p.add_argument("--samples", default="64,2000", help="calibration record counts")
    args = p.parse_args()
    common.require_shared("models", "stories260K")
    report = common.Report("cosine_default", False, vars(args))
    rows = []
    for subject, plan in SUBJECTS.items():
        for samples in args.samples.split(","):
            out = Path(args.runs) / f"{subject}-{samples}"
            cmd = [str(Path(sys.executable).parent / "replaceme"), "compare", "--plan", str(common.ROOT / "benchmarks" / "plans" / plan),
                   "--calib-samples", samples, "--output", str(out)]
            subprocess.run(cmd, check=False, cwd=common.ROOT)
            for row in json.loads((out / "results.json").read_text())["rows"]:
                if row["label"] == "baseline" or row["error"]:
                    continue
                (comp,) = row["details"]["outcome"]["compensations"]
                d = comp["diagnostics"]
                ppl = next(iter(row["metrics"].values()))
                held = 1 - d["heldout_cosine"] if "heldout_cosine" in d else None
                rows.append([subject, int(samples), row["layers"], row["label"], row["blocks"], d.get("tokens"),
                             d.get("steps"), d.get("loss_first"), d.get("loss_last"), held, ppl, row["prune_seconds"]])
    report.table("Cosine estimator settings: fit and held-out perplexity",
                 ["model", "calib records", "layers", "settings", "block", "train tokens", "steps", "train 1−cos first",
                  "train 1−cos last", "held-out 1−cos", "ppl (held-out text)", "prune s"], rows,
                 caption="train 1−cos: the cosine fit's loss at its start and end (LSTSQ rows: none). Held-out: the shared "
                         "pass's held-out calibration batches. Perplexity: valid.txt[3000:] (stories260K, 50k tokens) or "
                         "the demo's validation.txt.")
    report.save()


if __name__ == "__main__":
    main()
