"""Run settings in named groups: the same objects from the CLI, ``--config`` and the
Python API (whose keywords keep working), recorded in ``pruning.json``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tiny import tiny_model

import replaceme
from replaceme.cli import cli
from replaceme.errors import ReplacemeError
from replaceme.settings import LoadSettings, MemorySettings


def test_groups_from_option_values():
    values = {"device": "cpu", "dtype": "float32", "offload": True, "spill_dir": "/tmp/x", "calib": "ignored"}
    assert LoadSettings.from_values(values) == LoadSettings(device="cpu", dtype="float32")
    assert MemorySettings.from_values(values) == MemorySettings(offload=True, spill_dir="/tmp/x")
    assert MemorySettings(spill_dir=Path("/s")).to_dict() == {
        "offload": False, "disk_budget": None, "spill_dir": "/s", "gram_device": None, "calib_4bit": False,
        "stats_passes": "auto", "memory_budget": "auto"}


def test_keywords_and_settings_objects_prune_alike(tokenizer):
    model = tiny_model("llama")
    by_keywords = replaceme.prune(copy.deepcopy(model), "block-removal", 2, tokenizer=tokenizer, device="cpu",
                                  dtype="float32", start=1)
    by_settings = replaceme.prune(copy.deepcopy(model), "block-removal", 2, tokenizer=tokenizer, start=1,
                                  loading=LoadSettings(device="cpu", dtype="float32"), memory=MemorySettings())
    assert by_keywords.loading == by_settings.loading == LoadSettings(device="cpu", dtype="float32")
    assert by_keywords.plan.blocks == by_settings.plan.blocks
    for (name, a), (_, b) in zip(by_keywords.model.state_dict().items(), by_settings.model.state_dict().items()):
        assert torch.equal(a, b), name
    settings = by_settings.metadata()["settings"]
    assert settings["loading"] == {"device": "cpu", "dtype": "float32", "trust_remote_code": False}
    assert settings["memory"] == MemorySettings().to_dict() and settings["calibration"] is None


def test_a_setting_given_both_ways_is_refused(tokenizer):
    with pytest.raises(ReplacemeError, match="device given both"):
        replaceme.prune(tiny_model("llama"), "block-removal", 1, tokenizer=tokenizer, device="cuda",
                        loading=LoadSettings(device="cpu"))
    with pytest.raises(ReplacemeError, match="expected a MemorySettings"):
        replaceme.prune(tiny_model("llama"), "block-removal", 1, tokenizer=tokenizer, memory=LoadSettings())


def test_cli_and_config_record_the_groups(tmp_path, tiny_dir, calib_file):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_dir}\nmethod: uidl\nlayers: 1\ncalib: {calib_file}\ncalib_samples: 8\n"
                      f"max_length: 32\noutput: {tmp_path / 'out'}\ndevice: cpu\ngram_device: cpu\n"
                      f"spill_dir: {tmp_path / 'spill'}\nstats_passes: 1\nmemory_budget: 300M\n")
    (tmp_path / "spill").mkdir()
    result = CliRunner().invoke(cli, ["prune", "--config", str(config), "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert meta["settings"]["loading"] == {"device": "cpu", "dtype": "float32", "trust_remote_code": False}
    assert meta["settings"]["memory"] == {"offload": False, "disk_budget": "auto", "spill_dir": str(tmp_path / "spill"),
                                          "gram_device": "cpu", "calib_4bit": False, "stats_passes": "1",
                                          "memory_budget": "300M"}
    assert meta["statistics_memory"]["memory_budget"] == 300 * 2**20
    assert meta["settings"]["calibration"] == meta["calibration"] and meta["calibration"]["samples"] == 8
    assert meta["statistics_memory"]["sample_on_disk"] is True  # the spill directory was used
    assert list((tmp_path / "spill").iterdir()) == []  # and left clean
