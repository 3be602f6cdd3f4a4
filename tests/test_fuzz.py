"""Property-based tests (hypothesis): random junk in method options, ``--config``,
``--plan`` and command-line arguments gives exit 0 or one line on stderr with
exit 2 -- never a traceback, never an unexpected error, never a file written.

They stay fast: the model named is a path that does not exist, or a model folder
whose weights are corrupt, so every run ends in an error before or at loading:
every check that comes before the model is loaded is exercised."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replaceme.cli import cli
from replaceme.errors import ReplacemeError
from replaceme.methods import resolve_method

FAST = settings(max_examples=int(os.environ.get("REPLACEME_FUZZ_EXAMPLES", 40)), deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "true", "false", "0x10", "1_000", "", " ", "none", "[1]"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                      max_leaves=6)

METHODS = ["replaceme-lstsq", "replaceme-cosine", "uidl", "llm-streamline", "block-removal"]
OPTION_NAMES = ["alpha", "max_condition", "diag", "num_blocks", "merge_consecutive", "epochs", "lr", "token_budget",
                "batch_tokens", "start", "solver", "loss", "init", "lbfgs_steps", "mask_padding", "refit"]


@FAST
@given(method=st.sampled_from(METHODS),
       options=st.dictionaries(st.sampled_from(OPTION_NAMES) | st.text(max_size=8), values, max_size=3))
@pytest.mark.slow
def test_method_options_are_parsed_or_refused_in_one_line(method, options):
    try:
        resolved = resolve_method(method, options)
    except ReplacemeError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    for stage_options in resolved.options().values():  # what was accepted is finite and in range
        for value in (stage_options or {}).values():
            if isinstance(value, float):
                assert math.isfinite(value)


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_clean(result, root: Path, before: list[str]) -> None:
    assert result.exit_code in (0, 2), (result.exit_code, result.output)
    assert "Traceback" not in result.output
    if result.exit_code:  # the error is one line, and the last (warnings about the input may come before it)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("Error: "), result.stderr
        assert sum(line.startswith("Error") for line in lines) == 1, result.stderr
    assert snapshot(root) == before, "a failed run wrote something"


CONFIG_KEYS = ["model", "method", "layers", "calib", "calib_column", "calib_samples", "max_length", "batch_size",
               "seed", "output", "overwrite", "selector", "compensator", "device", "dtype", "chat_template", "options",
               "layers_to_skip", "num_A", "dataset", "dataset_size", "alpha", "solver", "loss", "save_path", "order",
               "holdout_fraction", "drop_last"]
PLAN_KEYS = ["model", "methods", "layers", "calib", "calib_samples", "max_length", "seed", "ppl", "tasks", "limit",
             "context_length", "stride", "num_fewshot", "eval_batch_size", "output", "device", "dtype", "include_models"]


def _yaml_file(root: Path, data) -> Path:
    path = root / "settings.yaml"
    try:
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    except (yaml.YAMLError, ValueError):
        path.write_text(str(data), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def corrupt_model(tmp_path_factory, tokenizer):
    """A model folder that passes every pre-check but cannot be loaded (truncated weights)."""
    from tiny import tiny_model

    path = tmp_path_factory.mktemp("fuzz") / "model"
    tiny_model("llama", layers=2).save_pretrained(path)
    tokenizer.save_pretrained(path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return path


@FAST
@given(data=st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=8), values, max_size=6))
def test_random_config_files(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = {**data, "model": str(root / "no-such-model")}
        if "output" in data:
            data["output"] = str(root / "out")
        path = _yaml_file(root, data)
        before = snapshot(root)
        result = CliRunner().invoke(cli, ["prune", "--config", str(path)])
        assert result.exit_code == 2  # no model: every run ends in an error
        assert_clean(result, root, before)


@FAST
@given(data=st.dictionaries(st.sampled_from(PLAN_KEYS) | st.text(max_size=8), values, max_size=6))
def test_random_plan_files(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data.pop("output", None)
        path = _yaml_file(root, data)
        before = snapshot(root)
        result = CliRunner().invoke(cli, ["compare", str(root / "no-such-model"), "--plan", str(path),
                                          "--output", str(root / "out")])
        assert result.exit_code == 2
        assert_clean(result, root, before)


OPTIONS = ["--method", "-m", "--layers", "-n", "-o", "--calib", "--calib-samples", "--max-length", "--batch-size",
           "--seed", "--device", "--dtype", "--output", "--overwrite", "--config", "--json", "--no-cache",
           "--chat-template", "--holdout-fraction", "--calib-order", "--selector", "--compensator"]
tokens = st.one_of(st.sampled_from(OPTIONS), st.text(max_size=10),
                   st.sampled_from(["nan", "inf", "-1", "0", "99999999999999999999999", "uidl", "1e-3", "--", "-", "a\x00b", "../.."]))


@FAST
@given(command=st.sampled_from(["prune", "distances", "evaluate", "compare"]), args=st.lists(tokens, max_size=8),
       real=st.booleans())
def test_random_command_lines(command, args, real, corrupt_model):
    model_before = snapshot(corrupt_model)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cwd = os.getcwd()
        os.chdir(root)
        try:
            before = snapshot(root)
            model = corrupt_model if real else root / "no-such-model"
            result = CliRunner().invoke(cli, [command, str(model), *args])
        finally:
            os.chdir(cwd)
        assert_clean(result, root, before)
    assert snapshot(corrupt_model) == model_before
