"""The README's demo table is what the shipped demo model gives: its baseline perplexity is
measured again here with the same harness and settings as `replaceme compare`."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny import ROOT  # noqa: E402


def readme_demo_baseline() -> tuple[str, float]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### On the demo model") :]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    (column,) = [c for c in header if c.startswith("ppl ")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "baseline":
            return column, float(cells[header.index(column)])
    raise AssertionError("no baseline row in the README's demo table")


@pytest.mark.slow
def test_readme_demo_baseline_is_the_shipped_models():
    from replaceme.demo import demo_data_files, demo_model_dir
    from replaceme.evaluation import EvalSpec, evaluate
    from replaceme.loading import load_model

    column, value = readme_demo_baseline()
    files = demo_data_files(demo_model_dir())
    assert column == f"ppl {files['validation'].name}"
    model, tokenizer = load_model("demo", device="cpu", dtype="float32")
    # compare's evaluation defaults: context 256, non-overlapping windows, every token
    result = evaluate(model, tokenizer, EvalSpec(ppl=[str(files["validation"])], device="cpu", dtype="float32"))
    (measured,) = result.metrics.values()
    assert measured == pytest.approx(value, rel=5e-4), (measured, value)


def test_readme_demo_rows_are_the_plan_files():
    """The README's second demo command (a plan file) gives exactly the table's rows, the marked one included."""
    import re

    from replaceme.compare.plan import read_plan_file

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### On the demo model") :]
    section = section[: section.index("\n### ", 1)]
    (plan_path,) = re.findall(r"replaceme compare --plan (\S+)", section.split("```")[1])
    plan = read_plan_file(str(ROOT / plan_path))
    labels = [m.label for m in plan["methods"]]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    table = [(r[0], int(r[1])) for r in rows[2:] if r[0] != "baseline"]
    assert table == [(label, n) for n in plan["layers"] for label in labels]
    assert "replaceme-cosine (-o preset reference)" in labels
