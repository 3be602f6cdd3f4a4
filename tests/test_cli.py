"""The command line: listings without torch, end-to-end prune, and one-line errors
that leave nothing behind."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

from replaceme.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_help_and_methods_do_not_import_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from replaceme.cli import cli\n"
        "for args in (['--help'], ['methods'], ['methods', '--json'], ['plugins'], ['prune', '--help']):\n"
        "    r = CliRunner().invoke(cli, args)\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--method", "uidll"], "did you mean 'uidl'"),
        (["--method", "uidl", "-o", "num_blockz", "2"], "did you mean 'num_blocks'"),
        (["--method", "replaceme-lstsq", "-o", "alpha", "-1"], "alpha must be >= 0"),
        (["--layers", "0"], "--layers must be between 1 and 5"),
        (["--layers", "6"], "--layers must be between 1 and 5"),
        (["--calib", "/no/such/file.txt"], "text file not found"),
        (["--calib", "EMPTY"], "no text records"),
        (["--calib", "JSONL", "--calib-column", "body"], "no column 'body'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(args, fragment, tiny_dir, tmp_path, calib_file):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "data.jsonl").write_text('{"text": "hello"}\n')
    defaults = {"--method": "uidl", "--layers": "1", "--calib": str(calib_file)}
    for i in range(0, len(args), 2):
        if args[i] in defaults:
            defaults[args[i]] = args[i + 1]
    extra = [a for i, a in enumerate(args) if not (i % 2 == 0 and a in defaults) and not (i % 2 == 1 and args[i - 1] in defaults)]
    defaults["--calib"] = {"EMPTY": str(tmp_path / "empty.txt"), "JSONL": str(tmp_path / "data.jsonl")}.get(defaults["--calib"], defaults["--calib"])
    out = tmp_path / "out"
    flat = [x for kv in defaults.items() for x in kv]
    result = invoke("prune", tiny_dir, *flat, *extra, "--output", out)
    assert_one_line_error(result, fragment)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "half-written output left behind"


def test_missing_model_and_existing_output(tmp_path, tiny_dir, calib_file):
    result = invoke("prune", tmp_path / "nope", "-m", "uidl", "-n", 1, "--calib", calib_file, "--output", tmp_path / "o")
    assert_one_line_error(result, "model path not found")
    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "keep.txt").write_text("precious")
    result = invoke("prune", tiny_dir, "-m", "uidl", "-n", 1, "--calib", calib_file, "--output", existing)
    assert_one_line_error(result, "--overwrite")
    assert (existing / "keep.txt").read_text() == "precious"


@pytest.mark.slow
def test_unreachable_hub_id_is_one_line(tmp_path, calib_file, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke("prune", "nobody/no-such-model-xyz", "-m", "uidl", "-n", 1, "--calib", calib_file, "--output", tmp_path / "o")
    assert_one_line_error(result, "cannot load model 'nobody/no-such-model-xyz'")


def test_overwrite_replaces_only_replacemes_own_output(tmp_path, tiny_dir, calib_file):
    out = tmp_path / "out"
    args = ["prune", tiny_dir, "-m", "block-removal", "-o", "start", 2, "--calib", calib_file, "--calib-samples", 8,
            "--output", out, "--json"]
    assert invoke(*args, "-n", 1).exit_code == 0
    result = invoke(*args, "-n", 2, "--overwrite")
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "pruning.json").read_text())
    assert meta["plan"]["blocks"] == [[2, 4]] and meta["layers_after"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "temporaries or backups left behind"
    user = tmp_path / "user"
    user.mkdir()
    (user / "old.txt").write_text("old")
    result = invoke(*args[:-3], "-n", 1, "--output", user, "--overwrite")
    assert_one_line_error(result, "not written by replaceme")
    assert (user / "old.txt").read_text() == "old"


def test_prune_real_model_with_uidl(shared, tmp_path):
    out = tmp_path / "OUT"
    result = invoke("prune", shared / "models" / "stories260K", "--method", "uidl", "--layers", 1,
                    "--calib", shared / "data" / "tinystories" / "valid.txt", "--calib-samples", 32,
                    "--max-length", 128, "--output", out)
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 4 and len(model.model.layers) == 4
    meta = json.loads((out / "pruning.json").read_text())
    for key in ("method", "options", "plan", "calibration", "seed", "versions", "usage"):
        assert key in meta
    assert meta["versions"]["torch"] == importlib.metadata.version("torch")
    assert meta["versions"]["replaceme"] == importlib.metadata.version("replaceme")
    ids = tok("Once upon a time", return_tensors="pt").input_ids
    text = tok.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0], skip_special_tokens=True)
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time") + 10


def test_reference_yaml_config(tmp_path, tiny_dir, calib_file):
    config = tmp_path / "ref.yaml"
    config.write_text(
        f"method: lstsq\nmodel_path: {tiny_dir}\ndataset: {calib_file}\ndataset_column: text\n"
        f"dataset_size: 12\nbatch_size: 4\nmax_length: 32\nlayers_to_skip: 1\nnum_A: 2\n"
        f"merge_consecutive: false\nsave_path: {tmp_path / 'ref-out'}\nuse_4bit: false\n"
    )
    result = invoke("prune", "--config", config)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "ref-out" / "pruning.json").read_text())
    assert meta["method"] == "replaceme-lstsq"
    assert meta["layers_removed"] == 2 and len(meta["plan"]["blocks"]) == 2
    assert meta["options"]["selector:angular-distance"]["num_blocks"] == 2
    assert meta["calibration"]["samples"] == 12


def test_distances_command(tmp_path, tiny_dir, calib_file):
    csv, png = tmp_path / "d.csv", tmp_path / "d.png"
    result = invoke("distances", tiny_dir, "-n", 2, "--calib", calib_file, "--calib-samples", 8,
                    "--json", "--csv", csv, "--plot", png)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 5 + 4  # sizes 1 and 2, starts from layer 1
    assert sum(r["best"] for r in rows) == 2
    assert csv.read_text().startswith("start,end,size,distance")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_block_removal_needs_no_calibration(tmp_path, tiny_dir):
    result = invoke("prune", tiny_dir, "-m", "block-removal", "-n", 2, "--output", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "o" / "pruning.json").read_text())
    assert meta["plan"]["blocks"] == [[3, 5]] and meta["calibration"] is None
    result = invoke("prune", tiny_dir, "-m", "uidl", "-n", 1, "--output", tmp_path / "p")
    assert_one_line_error(result, "needs calibration data")
