"""``python -m replaceme.demo``: check, retrain and verify the shipped demo weights.

    python -m replaceme.demo                     # check the shipped files against SHA256SUMS
    python -m replaceme.demo --retrain --verify  # train the recipe again, compare with the shipped weights
    python -m replaceme.demo --retrain --write   # ... and replace the shipped files (maintainers)

``--verify`` fails (exit status 1) unless the retrained model's validation
perplexity is within ``--tolerance`` (relative, default 0.5 %) of the shipped
one. Its last line says which of three outcomes it was (:func:`verdict`): ``OK``
only for bit-identical weights; ``WEIGHTS DIFFER`` when the perplexity agrees
but the weights do not (other torch or transformers versions and other CPUs
round differently, and training amplifies it); ``FAILED`` otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from replaceme.demo import shipped
from replaceme.demo.train import Recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replaceme.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--retrain", action="store_true", help="train the shipped recipe again (minutes)")
    parser.add_argument("--verify", action="store_true", help="with --retrain: fail unless the perplexities agree")
    parser.add_argument("--tolerance", type=float, default=0.005, help="relative perplexity tolerance for --verify")
    parser.add_argument("--write", action="store_true", help="with --retrain: replace the shipped files")
    parser.add_argument("--dest", type=Path, default=shipped.SHIPPED_DIR, help="where --write puts the files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    problems = shipped.checksum_problems()
    print(f"shipped demo model: {shipped.SHIPPED_DIR}: " + ("; ".join(problems) if problems else "checksums OK"))
    if not args.retrain:
        return 1 if problems else 0

    from replaceme.demo.subject import build

    recipe = Recipe(**shipped.shipped_info()["recipe"]) if not problems else Recipe()
    with tempfile.TemporaryDirectory(prefix="replaceme-demo-") as tmp:
        info = build(Path(tmp), recipe)
        report: dict = {"retrained": info["training"], "versions": info["versions"]}
        status = 0
        if not problems:
            old = shipped.shipped_info()
            report["shipped"] = {"training": old["training"], "versions": old["versions"]}
            report["weights"] = shipped.compare_weights(shipped.SHIPPED_DIR, tmp)
            new_ppl, old_ppl = info["training"]["validation_ppl"], old["training"]["validation_ppl"]
            report["validation_ppl_rel_diff"] = abs(new_ppl - old_ppl) / old_ppl
            if args.verify and report["validation_ppl_rel_diff"] > args.tolerance:
                status = 1
        print(json.dumps(report, indent=2))
        if args.write:
            shipped.install(tmp, args.dest)
            print(f"wrote the retrained demo model into {args.dest}")
    if args.verify:
        print(verdict(report, args.tolerance))
    return status


def verdict(report: dict, tolerance: float) -> str:
    """The last line of ``--verify``: ``OK`` only when the retrained weights are bit-identical."""
    weights = report.get("weights") or {}
    diff = report.get("validation_ppl_rel_diff")
    if diff is None:
        return "verify: FAILED (the shipped files do not match their checksums; nothing to compare with)"
    ppl = f"validation perplexity differs by {diff:.2%}"
    if diff > tolerance:
        return f"verify: FAILED ({ppl}, more than the tolerance {tolerance:.1%})"
    if weights.get("identical"):
        return f"verify: OK (bit-identical weights; {ppl})"
    spread = f"max relative difference {weights['max_rel_diff']:.3g}" if "max_rel_diff" in weights else "another layout"
    return (f"verify: WEIGHTS DIFFER ({spread}); {ppl}, within the tolerance {tolerance:.1%}: "
            "other software versions or CPUs round differently")


if __name__ == "__main__":
    sys.exit(main())
