"""Every example in CONTRIBUTING.md runs exactly as printed (placeholders such as MODEL filled in)."""

from __future__ import annotations

import re
import shlex
import sys
import types

import pytest
from click.testing import CliRunner
from tiny import ROOT

from replaceme.cli import cli

TEXT = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.+?)\n```", TEXT, flags=re.S)


def block_after(lang: str, marker: str) -> str:
    return re.search(rf"```{lang}\n(.+?)\n```", TEXT[TEXT.index(marker):], flags=re.S).group(1)


def run_module(code: str, name: str, monkeypatch, **names) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(names)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
    exec(compile(code, "CONTRIBUTING.md", "exec"), module.__dict__)
    return module


def test_every_python_example_is_covered_here():
    covered = {"Method(\"my-cosine\"", "class FirstOptions", "class LowestInfluenceSelector",
               "def test_contract", "temporary_plugin("}  # Example 2: tests/test_docs.py
    for code in blocks("python"):
        assert any(marker in code for marker in covered), code[:80]


def test_recipe_defaults_example_reads_every_default(monkeypatch):
    from replaceme.methods import resolve_method
    from replaceme.plugin import Method, temporary_plugin

    code = block_after("python", "### Method recipes and their defaults")
    recipe = eval(compile(code, "CONTRIBUTING.md", "eval"), {"Method": Method})
    with temporary_plugin("recipe-example", methods=[recipe]):
        resolved = resolve_method("my-cosine")
    assert resolved.ignored == {}  # every default it sets is read by the configuration it sets
    o = resolved.compensator.options
    assert (o.solver, o.lr, o.epochs) == ("adam", 1e-3, 5)


def test_example_1_is_the_installed_test_plugin_and_its_commands_run(tiny_dir, calib_file, tmp_path, monkeypatch):
    installed = (ROOT / "tests" / "fake_plugin" / "replaceme_fake" / "__init__.py").read_text()
    code = block_after("python", "`replaceme_fake/__init__.py`")
    assert installed.split('"""', 2)[2].strip() == code.strip()
    commands = block_after("bash", "A published plugin lists")
    lines = [line.split("#")[0].strip() for line in commands.splitlines()]
    pip = shlex.split(lines[0])
    assert pip[:3] == ["pip", "install", "-e"] and (ROOT / pip[3] / "pyproject.toml").is_file()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.txt").write_text(calib_file.read_text())
    (tmp_path / "eval.txt").write_text(calib_file.read_text())
    for line in lines[1:]:
        args = [str(tiny_dir) if a == "MODEL" else a for a in shlex.split(line)]
        assert args[0] == "replaceme"
        result = CliRunner().invoke(cli, args[1:])
        assert result.exit_code == 0, (line, result.output)
        if args[1] == "methods":
            assert "fake-first" in result.output
    assert (tmp_path / "out" / "pruning.json").is_file()


@pytest.mark.parametrize("test_name", ["test_contract", "test_least_squares_contract"])
def test_contract_kit_example_runs_as_printed(test_name, tmp_path, monkeypatch):
    module = run_module(block_after("python", "### Testing a plugin"), "contract_example", monkeypatch)
    test = getattr(module, test_name)
    (mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
    for arch in mark.args[1]:
        (tmp_path / arch).mkdir()
        test(arch, tmp_path / arch)


def test_temporary_plugin_example_runs_and_unregisters(monkeypatch):
    from replaceme.plugin import Method, Selector, hookimpl
    from replaceme.registry import registry

    class MySelector(Selector):
        name = "my-selector"
        description = "an example"

    my_module = types.ModuleType("my_module")
    my_module.register_methods = hookimpl(lambda register: register(Method("mine-too", "angular-distance", "none")))
    code = block_after("python", "To try a plugin without installing it")
    seen = []
    code = code.replace("    ...", "    seen.append(sorted(registry().methods))")
    run_module(code, "temporary_example", monkeypatch, my_module=my_module, MySelector=MySelector, seen=seen,
               registry=registry)
    assert "mine-too" in seen[0] and "mine" in seen[1]
    assert "mine" not in registry().methods and "mine-too" not in registry().methods
