"""The README's opening commands are the ones CI and users run."""

from __future__ import annotations

import re

from tiny import ROOT


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    head = text[: text.index("\n## ")]
    return re.findall(r"```bash\n(.+?)\n```", head, flags=re.S)


def test_readme_opens_with_the_main_job_and_the_test_command():
    main, tests = _readme_commands()[:2]
    assert main.strip().endswith("replaceme compare")
    assert "torch==2.13.0" in main and "torch==2.13.0" in tests  # CPU torch first, before anything can pull CUDA
    assert tests.strip().endswith("pytest -q --full")  # the whole suite, slow tier included


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    tests = _readme_commands()[1].strip()
    assert tests in ci.splitlines()


def _contributing_block(lang: str, heading: str) -> str:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    section = text[text.index(heading):]
    return re.search(rf"```{lang}\n(.+?)\n```", section, flags=re.S).group(1)


def test_contributing_example_pyproject_is_the_fake_plugins():
    example = _contributing_block("toml", "### Example 1")
    assert example.strip() == (ROOT / "tests" / "fake_plugin" / "pyproject.toml").read_text().strip()


def test_contributing_second_example_runs_and_picks_the_lowest_influence_layers(tokenizer, calib_file, monkeypatch):
    """The ShortGPT-style example plugin, exactly as printed, against a direct computation
    of BI_i = 1 − mean over non-pad tokens of cos(x_i, x_{i+1})."""
    import sys
    import types

    import torch
    from tiny import boundary_states, tiny_model

    import replaceme
    from replaceme.calibration import CalibrationSpec, build_calibration
    from replaceme.registry import adapter_for, register_plugin, unregister_plugin

    module = types.ModuleType("replaceme_block_influence")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    exec(compile(_contributing_block("python", "### Example 2"), "CONTRIBUTING.md", "exec"), module.__dict__)
    spec = CalibrationSpec(str(calib_file), samples=16, max_length=40, batch_size=4, seed=0)
    model = tiny_model("llama")
    L = model.config.num_hidden_layers
    sums, count = torch.zeros(L, dtype=torch.float64), 0
    for mask, x in boundary_states(model, adapter_for(model), build_calibration(spec, tokenizer)):
        for i in range(L):
            sums[i] += torch.nn.functional.cosine_similarity(x[i], x[i + 1], dim=-1)[mask].sum()
        count += int(mask.sum())
    bi = 1 - sums / count
    want = sorted(sorted(range(1, L - 1), key=lambda i: float(bi[i]))[:2])

    register_plugin(module, "example")
    try:
        result = replaceme.prune(model, method="example-block-influence", layers=2, calibration=spec, tokenizer=tokenizer)
    finally:
        unregister_plugin("example")
    removed = sorted(i for b in result.plan.blocks for i in range(b.start, b.end))
    assert removed == want
    torch.testing.assert_close(torch.tensor(result.plan.details["block_influence"], dtype=torch.float64), bi,
                               rtol=1e-6, atol=1e-9)


def test_batch_size_means_what_the_readme_table_says():
    """Each command's --batch-size (and evaluation batch size) help says what the README's table says."""
    from replaceme.cli import cli

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (`[^|]+`) \| ([^|]+) \| ([^|]+) \|$", text[text.index("`--batch-size` counts"):], flags=re.M)
    assert rows
    for commands, counts, own in rows:
        for name in re.findall(r"`(\w+)`", commands):
            params = {p.name: p for p in cli.get_command(None, name).params}
            assert params["batch_size"].help.rstrip(".").lower() == counts.strip().lower(), name
            if own.strip() != "—":
                flag, meaning = re.match(r"`--([\w-]+)`: (.+)", own.strip()).groups()
                assert params[flag.replace("-", "_")].help.rstrip(".").lower() == meaning.lower(), name
