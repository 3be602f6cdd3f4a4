"""``compare --heal``: one table with training-free and healed rows (``uidl+lora``), the
healing time as a column, healed rows equal to what ``prune --heal`` writes, and the
shared weights (the teacher) untouched."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from tiny import calibration_text, tiny_model

from replaceme.cli import cli

HEAL = ["-o", "heal.steps", "3", "-o", "heal.seq_len", "16", "-o", "heal.heldout", "2", "-o", "heal.batch_size", "4"]


@pytest.mark.slow
def test_compare_shows_training_free_and_healed_rows(tmp_path, tokenizer):
    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    calib = calibration_text(tmp_path / "calib.txt", records=40)
    evalf = calibration_text(tmp_path / "eval.txt", records=20, seed=7)
    heal_text = calibration_text(tmp_path / "heal.txt", records=40, seed=5)
    before = (model_dir / "model.safetensors").read_bytes()
    args = ["compare", str(model_dir), "-m", "uidl", "-m", "replaceme-lstsq", "-n", "1", "--calib", str(calib),
            "--calib-samples", "16", "--max-length", "48", "--ppl", str(evalf), "--context-length", "32",
            "--heal", "lora", "--heal-data", str(heal_text), *HEAL, "--output", str(tmp_path / "out"), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["method"] for r in rows] == ["baseline", "uidl", "replaceme-lstsq", "uidl+lora", "replaceme-lstsq+lora"]
    by = {r["method"]: r for r in rows}
    assert by["uidl"]["heal s"] is None and by["uidl+lora"]["heal s"] > 0
    assert by["uidl+lora"]["params"] == by["uidl"]["params"]  # the adapters were merged back
    assert by["uidl+lora"]["blocks"] == by["uidl"]["blocks"]
    ppl = next(k for k in rows[0] if k.startswith("ppl"))
    assert by["uidl+lora"][ppl] != by["uidl"][ppl]
    detail = json.loads((tmp_path / "out" / "results.json").read_text())
    healed = next(r for r in detail["rows"] if r["label"] == "uidl+lora")
    assert healed["details"]["healing"]["healer"] == "lora"
    assert healed["details"]["healing"]["data"]["source"] == str(heal_text)
    assert (model_dir / "model.safetensors").read_bytes() == before

    # the same healed model from prune: the comparison's row is what prune --heal writes
    out = tmp_path / "pruned"
    pruned = CliRunner().invoke(cli, ["prune", str(model_dir), "-m", "uidl", "-n", "1", "--calib", str(calib),
                                      "--calib-samples", "16", "--max-length", "48", "--heal", "lora",
                                      "--heal-data", str(heal_text), *HEAL, "--output", str(out)])
    assert pruned.exit_code == 0, pruned.output
    meta = json.loads((out / "pruning.json").read_text())
    assert meta["healing"]["loss"] == healed["details"]["healing"]["loss"]
    ids = torch.randint(0, 50, (1, 10))
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        assert AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits.isfinite().all()
