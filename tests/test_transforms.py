"""``prune --save-transforms``: the estimated maps and removed blocks beside the model (transforms.safetensors)."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from replaceme.cli import cli
from replaceme.transforms import read_transforms


def prune(*args):
    return CliRunner().invoke(cli, ["prune", *map(str, args)])


def test_saved_maps_are_the_folded_ones(tiny_dir, calib_file, tmp_path):
    out = tmp_path / "out"
    result = prune(tiny_dir, "-m", "replaceme-lstsq", "-n", 2, "-o", "num_blocks", 2, "--calib", calib_file,
                   "--calib-samples", 16, "--max-length", 32, "--save-transforms", "--output", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "pruning.json").read_text())
    blocks, maps = read_transforms(out / "transforms.safetensors")
    assert blocks == [tuple(b) for b in meta["plan"]["blocks"]] == [tuple(c["block"]) for c in meta["compensations"]]
    assert meta["transforms_file"] == "transforms.safetensors" and len(maps) == 2
    before, after = load_file(tiny_dir / "model.safetensors"), load_file(out / "model.safetensors")
    removed = {i for s, e in blocks for i in range(s, e)}
    new_index = {old: new for new, old in enumerate(i for i in range(meta["layers_before"]) if i not in removed)}
    for entry in maps:
        t = entry["transform"]
        hidden = meta.get("hidden_size") or before["model.norm.weight"].shape[0]
        assert t.dtype == torch.float64 and t.shape == (hidden, hidden) and entry["layer"] == entry["block"][0] - 1
        w = before[f"model.layers.{entry['layer']}.mlp.down_proj.weight"].double()
        folded = after[f"model.layers.{new_index[entry['layer']]}.mlp.down_proj.weight"].double()
        torch.testing.assert_close(folded, (w.T @ t).T, rtol=1e-5, atol=1e-6)  # W' = Tᵀ W: r ↦ r T on the MLP output


def test_methods_without_maps_save_the_removed_blocks(tiny_dir, calib_file, tmp_path):
    out = tmp_path / "out"
    assert prune(tiny_dir, "-m", "uidl", "-n", 1, "--calib", calib_file, "--calib-samples", 8, "--max-length", 16,
                 "--save-transforms", "--output", out).exit_code == 0
    blocks, maps = read_transforms(out / "transforms.safetensors")
    assert maps == [] and blocks == [tuple(b) for b in json.loads((out / "pruning.json").read_text())["plan"]["blocks"]]
    assert not (tmp_path / "plain").exists()
    assert prune(tiny_dir, "-m", "uidl", "-n", 1, "--calib", calib_file, "--calib-samples", 8, "--max-length", 16,
                 "--output", tmp_path / "plain").exit_code == 0
    assert not (tmp_path / "plain" / "transforms.safetensors").exists()
