"""Every pruned model directory carries a Hugging Face model card (README.md with YAML front matter)."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml
from click.testing import CliRunner
from huggingface_hub import ModelCard
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


def reproduce_args(body: str) -> list[str]:
    command = body.split("## Reproduce", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    return shlex.split(command)


def same_weights(a_dir, b_dir) -> bool:
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


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
    assert "base_model" not in meta  # a local model that did not come from the Hub has no Hub id
    assert meta_file["source_model"] == str(source) and meta_file["base_model"] is None
    assert set(meta["tags"]) >= {"replaceme", "depth-pruning", "pruned"}
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "mit"  # carried over from the source's card
    blocks = [tuple(c["block"]) for c in meta_file["compensations"]]
    assert "replaceme-lstsq" in body and f"[{blocks[0][0]}, {blocks[0][1]})" in body
    assert "6 → 4" in body and str(calib_file) in body and "## Evaluation" not in body

    # the command in the card makes the same model again
    args = reproduce_args(body)
    assert args[:2] == ["replaceme", "prune"] and args[args.index("-o") + 1:args.index("-o") + 3] == ["alpha", "0.001"]
    again = tmp_path / "again"
    args[args.index("--output") + 1] = str(again)
    monkeypatch.chdir(tmp_path)
    rerun = invoke(*args[1:])
    assert rerun.exit_code == 0, rerun.output
    assert same_weights(out, again)


def test_evaluate_adds_results_to_the_card(source, tmp_path, calib_file):
    out = tmp_path / "pruned"
    assert invoke("prune", source, "-m", "uidl", "-n", 1, "--calib", calib_file, "--calib-samples", 16,
                  "--max-length", 32, "--output", out).exit_code == 0
    card = (out / "README.md").read_text()
    meta, _ = front_matter(card)
    assert "base_model" not in meta and "model-index" not in meta

    scored = invoke("evaluate", out, "--ppl", calib_file, "--json")
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(scored.output[scored.output.index("{") :])["metrics"]
    for _ in range(2):  # a second run replaces the section, it does not pile up
        result = invoke("evaluate", out, "--ppl", calib_file, "--model-card")
        assert result.exit_code == 0, result.output
    _, body = front_matter((out / "README.md").read_text())
    assert body.count("## Evaluation") == 1
    (name, value), = metrics.items()
    assert f"| `{name.removeprefix('ppl:')}` | perplexity | {value:.4g} |" in body
    assert f"replaceme evaluate {out} --ppl {calib_file}" in body
    # the unpruned source was evaluated with the same settings; the results are in model-index
    plain = invoke("evaluate", source, "--ppl", calib_file, "--json").output
    baseline = json.loads(plain[plain.index("{"):])["metrics"][name]
    row = next(line for line in body.splitlines() if line.startswith(f"| `{name.removeprefix('ppl:')}`"))
    assert row.split(" | ")[4] == f"{baseline:.4g}"
    card = ModelCard.load(out / "README.md")
    (entry,) = card.data.eval_results
    assert entry.metric_type == "perplexity" and entry.metric_value == pytest.approx(value)
    assert entry.dataset_name == str(calib_file)

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
    assert "license" not in meta and "base_model" not in meta
    assert "calibration data" not in body  # block removal of the last layers reads no data


def test_card_passes_the_hubs_checks_and_a_swapped_stage_reproduces(source, tmp_path, calib_file, monkeypatch):
    from huggingface_hub.utils import validate_repo_id

    out = tmp_path / "swapped"
    result = invoke("prune", source, "-m", "replaceme-lstsq", "--selector", "block-influence", "-n", 1,
                    "--calib", calib_file, "--calib-samples", 16, "--max-length", 32, "--holdout-fraction", 0,
                    "--base-model", "org/tiny-llama", "--output", out)
    assert result.exit_code == 0, result.output
    text = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    validate_repo_id(card.data.base_model)
    assert card.data.base_model == "org/tiny-llama"
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict() == front_matter(text)[0]  # round trip
    args = reproduce_args(card.text)
    assert args[args.index("-m") + 1] == "replaceme-lstsq" and args[args.index("--selector") + 1] == "block-influence"
    assert "block-influence+lstsq" not in args
    assert "nothing (0)" in card.text  # --holdout-fraction 0: nothing was held out
    meta = json.loads((out / "pruning.json").read_text())
    assert meta["stages"]["selector"] == {"name": "block-influence", "distribution": "replaceme",
                                          "version": meta["project"]["version"]}
    assert meta["recipe"]["selector"] == "block-influence" and meta["holdout"]["batches"] == 0
    again = tmp_path / "again"
    args[args.index("--output") + 1] = str(again)
    monkeypatch.chdir(tmp_path)
    assert invoke(*args[1:]).exit_code == 0
    assert same_weights(out, again)


def test_base_model_from_the_hub_cache_and_bad_ids(tmp_path, tokenizer):
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "0123abcd"
    tiny_model("llama", layers=4).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    out = tmp_path / "pruned"
    assert invoke("prune", snapshot, "-m", "block-removal", "-n", 1, "--output", out).exit_code == 0
    assert front_matter((out / "README.md").read_text())[0]["base_model"] == "org/tiny"
    bad = invoke("prune", snapshot, "-m", "block-removal", "-n", 1, "--base-model", "../not a repo", "--output", tmp_path / "x")
    assert bad.exit_code == 2 and "--base-model" in bad.output and not (tmp_path / "x").exists()


def test_hostile_names_stay_inside_the_card(tmp_path, tokenizer, calib_file):
    from markdown_it import MarkdownIt

    base = tmp_path / "base"
    tiny_model("llama", layers=4).save_pretrained(base)
    tokenizer.save_pretrained(base)
    hostile = tmp_path / "cal`|x```.txt"
    hostile.write_text(calib_file.read_text())
    out = tmp_path / "out ```bash"
    result = invoke("prune", base, "-m", "uidl", "-n", 1, "--calib", hostile, "--calib-samples", 8, "--max-length", 16,
                    "--output", out)
    assert result.exit_code == 0, result.output
    card = ModelCard.load(out / "README.md")
    tokens = MarkdownIt("commonmark").enable("table").parse(card.text)
    fences = [t for t in tokens if t.type == "fence"]
    assert [t.info for t in fences] == ["json", "bash"]  # nothing opened or closed a code block
    args = shlex.split(fences[1].content)
    assert args[args.index("--calib") + 1] == str(hostile) and args[args.index("--output") + 1] == str(out)
    rows = [t for t in tokens if t.type == "tr_open"]
    cells = [t for t in tokens if t.type == "td_open"]
    assert len(rows) == 1 + 9 and len(cells) == 2 * 9  # header + the nine rows of "How it was pruned", two cells each


def test_ignored_options_warn_are_recorded_and_refused_with_strict(source, tmp_path, calib_file):
    common = ["prune", source, "-m", "replaceme-cosine", "-n", 1, "--calib", calib_file, "--calib-samples", 8,
              "--max-length", 16, "-o", "lbfgs_steps", 2]
    strict = invoke(*common, "-o", "lr", "0.5", "--strict", "--output", tmp_path / "s")
    assert strict.exit_code == 2 and "'lr' does nothing" in strict.output and not (tmp_path / "s").exists()
    result = invoke(*common, "-o", "lr", "0.5", "--output", tmp_path / "w")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "w" / "pruning.json").read_text())
    assert set(meta["recipe"]["ignored_options"]) == {"lr"} and "solver = adam" in meta["recipe"]["ignored_options"]["lr"]
    assert "`lr`" in (tmp_path / "w" / "README.md").read_text().split("does not read", 1)[1]
