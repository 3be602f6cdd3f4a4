"""Every pruned model directory carries a Hugging Face model card (README.md with YAML front matter)."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file
from tiny import tiny_model

from replaceme.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def front_matter(text: str) -> tuple[dict, str]:
    """Parse the card the way the hub does: a YAML block between the first two '---' lines."""
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.fixture
def source(tmp_path, tokenizer):
    path = tmp_path / "base"
    tiny_model("llama", layers=6).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# a base model\n", encoding="utf-8")
    return path


def test_pruned_model_has_a_card_that_reproduces_it(source, tmp_path, calib_file, monkeypatch):
    out = tmp_path / "pruned"
    result = invoke("prune", source, "-m", "replaceme-lstsq", "-n", 2, "--calib", calib_file, "--calib-samples", 24,
                    "--max-length", 32, "--batch-size", 4, "-o", "alpha", "0.001", "--seed", 3, "--output", out)
    assert result.exit_code == 0, result.output
    meta_file = json.loads((out / "pruning.json").read_text())
    meta, body = front_matter((out / "README.md").read_text(encoding="utf-8"))
    assert meta["base_model"] == str(source)
    assert set(meta["tags"]) >= {"replaceme", "depth-pruning", "pruned"}
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "mit"  # carried over from the source's card
    blocks = [tuple(c["block"]) for c in meta_file["compensations"]]
    assert "replaceme-lstsq" in body and f"[{blocks[0][0]}, {blocks[0][1]})" in body
    assert "6 → 4" in body and str(calib_file) in body and "## Evaluation" not in body

    # the command in the card makes the same model again
    command = body.split("## Reproduce", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    args = shlex.split(command)
    assert args[:2] == ["replaceme", "prune"] and "-o" in args and "alpha" in args
    again = tmp_path / "again"
    args[args.index("--output") + 1] = str(again)
    monkeypatch.chdir(tmp_path)
    rerun = invoke(*args[1:])
    assert rerun.exit_code == 0, rerun.output
    a, b = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_evaluate_adds_results_to_the_card(source, tmp_path, calib_file):
    out = tmp_path / "pruned"
    assert invoke("prune", source, "-m", "uidl", "-n", 1, "--calib", calib_file, "--calib-samples", 16,
                  "--max-length", 32, "--output", out).exit_code == 0
    card = (out / "README.md").read_text()
    meta, _ = front_matter(card)
    assert meta["base_model"] == str(source)

    scored = invoke("evaluate", out, "--ppl", calib_file, "--json")
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(scored.output[scored.output.index("{") :])["metrics"]
    for _ in range(2):  # a second run replaces the section, it does not pile up
        result = invoke("evaluate", out, "--ppl", calib_file, "--model-card")
        assert result.exit_code == 0, result.output
    _, body = front_matter((out / "README.md").read_text())
    assert body.count("## Evaluation") == 1
    (name, value), = metrics.items()
    assert f"| {name} | {value:.4g} |" in body
    assert f"replaceme evaluate {out} --ppl {calib_file}" in body

    # only replaceme's own outputs are written to
    result = invoke("evaluate", source, "--ppl", calib_file, "--model-card")
    assert result.exit_code != 0 and "not a pruned model written by replaceme" in result.output
    assert (source / "README.md").read_text().startswith("---\nlicense: mit")


def test_license_is_left_out_when_unknown(tmp_path, tokenizer, calib_file):
    base = tmp_path / "base"
    tiny_model("llama").save_pretrained(base)
    tokenizer.save_pretrained(base)
    out = tmp_path / "pruned"
    assert invoke("prune", base, "-m", "block-removal", "-n", 1, "--output", out).exit_code == 0
    meta, body = front_matter((out / "README.md").read_text())
    assert "license" not in meta and meta["base_model"] == str(base)
    assert "calibration data" not in body  # block removal of the last layers reads no data
