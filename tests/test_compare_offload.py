"""``compare --offload`` and ``distances --offload``: the same rows and tables as in memory,
on every adapter family, with each variant holding only its changed layers."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tiny import ARCHS, POST_NORM_ARCHS, arch_params, calibration_text, make_tokenizer, tiny_model

from replaceme.cli import cli

METHODS = ["uidl", "replaceme-lstsq", "replaceme-cosine", "llm-streamline", "sleb"]


def _saved(tmp_path, arch):
    path = tmp_path / arch
    tiny_model(arch).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def _compare(model, text, methods, extra=()):
    args = ["compare", str(model), *[a for m in methods for a in ("-m", m)], "-n", "2", "--calib", str(text),
            "--calib-samples", "12", "--max-length", "32", "--batch-size", "4", "--ppl", str(text),
            "--context-length", "32", "--max-ppl-tokens", "200", "--device", "cpu", "-o", "token_budget", "600",
            "--no-cache", "--json", *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("arch", arch_params(ARCHS))
def test_compare_offload_rows_equal_in_memory(arch, tmp_path):
    model = _saved(tmp_path, arch)
    text = calibration_text(tmp_path / "text.txt", records=24)
    methods = [m for m in METHODS if not (arch in POST_NORM_ARCHS and m in ("replaceme-lstsq", "replaceme-cosine"))]
    memory, layered = _compare(model, text, methods), _compare(model, text, methods, ["--offload"])
    assert [(r["method"], r["blocks"]) for r in layered] == [(r["method"], r["blocks"]) for r in memory]
    for want, got in zip(memory, layered):
        assert got["params"] == want["params"]
        assert got[f"ppl {text.name}"] == pytest.approx(want[f"ppl {text.name}"], rel=1e-5), got["method"]


def test_distances_offload_equal_in_memory(tmp_path):  # with --loss: every block scored layer by layer
    model = _saved(tmp_path, "qwen2")
    text = calibration_text(tmp_path / "text.txt", records=24)
    tables = []
    for extra in ([], ["--offload"]):
        out = tmp_path / f"d{len(extra)}.csv"
        result = CliRunner().invoke(cli, ["distances", str(model), "-n", "2", "--loss", "--calib", str(text),
                                          "--calib-samples", "20",
                                          "--max-length", "32", "--batch-size", "4", "--holdout-fraction", "0.25",
                                          "--device", "cpu", "--no-cache", "--csv", str(out),
                                          *extra])
        assert result.exit_code == 0, result.output
        tables.append(out.read_text().splitlines())
    assert tables[0][0] == tables[1][0] and len(tables[0]) == len(tables[1]) > 2
    assert "loss" in tables[0][0]
    for a, b in zip(tables[0][1:], tables[1][1:]):
        memory, layered = a.split(","), b.split(",")
        assert [x for x in layered if x in ("True", "False")] == [x for x in memory if x in ("True", "False")]
        assert [float(x) for x in layered if x not in ("True", "False")] == \
            pytest.approx([float(x) for x in memory if x not in ("True", "False")], rel=1e-6, abs=1e-9)
