"""``compare --include-model``: models pruned elsewhere become rows of the same table."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from tiny import calibration_text, tiny_config, tiny_model

from replaceme.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])



@pytest.fixture
def setup(tmp_path, tokenizer):
    base = tmp_path / "base"
    tiny_model("llama", layers=4).save_pretrained(base)
    tokenizer.save_pretrained(base)
    # a "width-pruned" model: same depth, narrower MLP, its own weights (as LLM-Pruner or SliceGPT would give)
    import transformers

    config = tiny_config("llama", layers=4)
    config.intermediate_size = 16
    torch.manual_seed(1)
    narrow = transformers.LlamaForCausalLM(config)
    (tmp_path / "narrow").mkdir()
    narrow.save_pretrained(tmp_path / "narrow")
    tokenizer.save_pretrained(tmp_path / "narrow")
    calib = calibration_text(tmp_path / "calib.txt", records=24)
    evalf = calibration_text(tmp_path / "eval.txt", records=12, seed=1)
    return tmp_path, base, calib, evalf, narrow


@pytest.mark.slow
def test_included_models_are_rows_scored_like_replaceme_evaluate(setup):
    tmp_path, base, calib, evalf, narrow = setup
    earlier = tmp_path / "earlier"
    assert invoke("prune", base, "-m", "uidl", "-n", 1, "--calib", calib, "--calib-samples", 8, "--max-length", 32,
                  "--output", earlier).exit_code == 0
    out = tmp_path / "cmp"
    args = ["compare", base, "-m", "uidl", "-n", 1, "--calib", calib, "--calib-samples", 8, "--max-length", 32,
            "--ppl", evalf, "--include-model", f"narrow={tmp_path / 'narrow'}", "--include-model", earlier,
            "--output", out]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "narrow" in result.output and "earlier" in result.output  # rows of the printed table
    saved = json.loads((out / "results.json").read_text())
    rows = {r["label"]: r for r in saved["rows"]}
    assert list(rows) == ["baseline", "uidl", "narrow", "earlier"]
    assert rows["narrow"]["params"] == sum(p.numel() for p in narrow.parameters())
    assert rows["narrow"]["params"] < rows["baseline"]["params"]
    assert rows["narrow"]["layers"] == 0 and rows["earlier"]["layers"] == 1
    assert rows["earlier"]["params"] == rows["uidl"]["params"]
    summary = {r["method"]: r for r in saved["summary"]}
    assert summary["narrow"]["retained %"] is not None
    rows = {label: {**r, **r["metrics"]} for label, r in rows.items()}
    metric = next(iter(rows["baseline"]["metrics"]))
    for label, path in (("narrow", tmp_path / "narrow"), ("earlier", earlier)):
        alone = invoke("evaluate", path, "--ppl", evalf, "--json")
        assert alone.exit_code == 0, alone.output
        (value,) = json.loads(alone.output[alone.output.index("{") :])["metrics"].values()
        assert rows[label][metric] == pytest.approx(value, rel=1e-6)
    # the earlier replaceme output is the same uidl model as the uidl row
    assert rows["earlier"][metric] == pytest.approx(rows["uidl"][metric], rel=1e-6)

    # resuming skips the finished rows, included ones too
    again = invoke(*args)
    assert again.exit_code == 0 and "included model" not in again.output


def test_an_included_model_needs_the_base_tokenizer(setup, tmp_path):
    _, base, calib, evalf, _ = setup
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    other = tmp_path / "other"
    tiny_model("llama", layers=3).save_pretrained(other)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "a": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(other)
    result = invoke("compare", base, "-m", "uidl", "-n", 1, "--calib", calib, "--ppl", evalf,
                    "--include-model", f"x={other}")
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip() and not line.startswith("INFO")]
    assert len(lines) == 1 and "--include-model x" in lines[0] and "vocabulary differs" in lines[0]


def test_include_labels_and_plan_files(tmp_path):
    from replaceme.compare.external import parse_include

    (tmp_path / "a=b").mkdir()
    got = parse_include(["slice=/m/slicegpt", "/m/llm-pruner/", str(tmp_path / "a=b"), {"path": "/m/x", "label": "y"}])
    assert [(e.label, e.path) for e in got] == [
        ("slice", "/m/slicegpt"), ("llm-pruner", "/m/llm-pruner/"), ("a=b", str(tmp_path / "a=b")), ("y", "/m/x")]
