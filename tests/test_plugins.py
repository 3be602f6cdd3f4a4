"""Plugin discovery and registration: third-party packages, throwaway in-process
plugins, duplicate names, broken plugins, option validation."""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

import replaceme.registry as reg_mod
from replaceme.cli import cli
from replaceme.errors import ReplacemeError
from replaceme.methods import resolve_method
from replaceme.options import option
from replaceme.plan import Block, Plan
from replaceme.plugin import Method, Selector, temporary_plugin
from replaceme.registry import registry, unregister_plugin


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_builtin_methods_are_listed_with_options():
    result = CliRunner().invoke(cli, ["methods", "--json"])
    assert result.exit_code == 0, result.output
    catalog = json.loads(result.stdout)
    methods = {m["name"]: m for m in catalog["methods"]}
    assert {"block-removal", "uidl", "replaceme-lstsq", "replaceme-cosine"} <= set(methods)
    assert {o["name"] for o in methods["uidl"]["options"]} == {"num_blocks", "merge_consecutive"}
    assert any(o["name"] == "alpha" and o["help"] for o in methods["replaceme-lstsq"]["options"])


@pytest.mark.skipif(not _installed("replaceme-fake"), reason="tests/fake_plugin is not installed (CI installs it)")
def test_installed_third_party_plugin_shows_up():
    result = CliRunner().invoke(cli, ["methods", "--json"])
    assert "fake-first" in {m["name"] for m in json.loads(result.stdout)["methods"]}
    plugins = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).stdout)
    fake = next(p for p in plugins if p["name"] == "fake")
    assert fake["distribution"] == "replaceme-fake" and fake["version"] == "0.0.1"
    assert "method:fake-first" in fake["contributes"]


@dataclass
class _Opts:
    width: int = option(1, "a number")


class _Sel(Selector):
    name = "throwaway-selector"
    description = "test"
    Options = _Opts

    def candidates(self, ctx):
        return [Block(1, 1 + ctx.layers)]

    def select(self, stats, ctx):
        return Plan(self.candidates(ctx))


@pytest.fixture
def throwaway():
    with temporary_plugin("throwaway", selectors=[_Sel],
                          methods=[Method("throwaway", "throwaway-selector", "none", "remove")]):
        yield


def test_throwaway_plugin_registers_and_unregisters(throwaway):
    assert "throwaway" in registry().methods
    resolved = resolve_method("throwaway", {"width": "3"})
    assert resolved.selector.options.width == 3
    unregister_plugin("throwaway")
    assert "throwaway" not in registry().methods


def test_unknown_option_has_did_you_mean(throwaway):
    with pytest.raises(ReplacemeError, match="did you mean 'width'"):
        resolve_method("throwaway", {"widht": 2})
    with pytest.raises(ReplacemeError, match="expected int"):
        resolve_method("throwaway", {"width": "wide"})


def test_duplicate_name_skips_the_later_plugin_with_a_warning(caplog):
    with temporary_plugin("dup", methods=[Method("uidl", "angular-distance", "none", "remove")]):
        with caplog.at_level("WARNING", logger="replaceme"):
            reg = registry()
        assert reg.owners[("methods", "uidl")] == "uidl"  # the built-in keeps its name
        assert "already registered by plugin 'uidl'" in next(p for p in reg.plugins if p.name == "dup").error
        assert any("'dup'" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


def test_broken_plugin_is_named_and_skipped(monkeypatch, caplog):
    broken = importlib.metadata.EntryPoint(name="broken", value="replaceme_no_such_module_xyz", group="replaceme")
    real = importlib.metadata.entry_points

    def entry_points(group=None, **kw):
        return list(real(group=group)) + [broken] if group == "replaceme" else real(group=group, **kw)

    monkeypatch.setattr(reg_mod.importlib.metadata, "entry_points", entry_points)
    reg_mod._cached.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="replaceme"):
            reg = registry()
        assert "uidl" in reg.methods
        info = next(p for p in reg.plugins if p.name == "broken")
        assert "ModuleNotFoundError" in info.error
        assert any("broken" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)
    finally:
        monkeypatch.undo()
        reg_mod._cached.cache_clear()


def test_stage_mixing_on_the_command_line():
    resolved = resolve_method("replaceme-lstsq", selector="block-influence")
    assert resolved.selector.name == "block-influence" and resolved.compensator.name == "lstsq"
    assert resolved.merger.name == "fold-linear"
    assert resolved.label == "block-influence+lstsq"
