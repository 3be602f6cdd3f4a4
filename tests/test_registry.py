"""Registration through pluggy: isolation of broken plugins, deterministic order,
typed per-stage defaults, and merger/compensator compatibility."""

from __future__ import annotations

import importlib.metadata
import json
import textwrap
from dataclasses import dataclass

import pytest
import torch
from click.testing import CliRunner
from tiny import tiny_model

import replaceme
import replaceme.registry as reg_mod
from replaceme.cli import cli
from replaceme.components import Method, Selector
from replaceme.errors import ReplacemeError
from replaceme.methods import resolve_method
from replaceme.options import option
from replaceme.plan import Block, Plan
from replaceme.plugin import temporary_plugin
from replaceme.registry import registry

GOOD_SELECTOR = """
from replaceme import hookimpl
from replaceme.components import Selector
from replaceme.plan import Block, Plan


class {cls}(Selector):
    name = "{name}"

    def candidates(self, ctx):
        return [Block(1, 1 + ctx.layers)]

    def select(self, stats, ctx):
        return Plan(self.candidates(ctx))


@hookimpl
def register_selectors(register):
    register({cls})
"""


@pytest.fixture
def installed(monkeypatch, tmp_path):
    """Install throwaway plugin modules as entry points of the 'replaceme' group."""
    monkeypatch.syspath_prepend(str(tmp_path))
    extra: list[importlib.metadata.EntryPoint] = []
    real = importlib.metadata.entry_points

    def entry_points(group=None, **kw):
        return list(real(group=group)) + extra if group == "replaceme" else real(group=group, **kw)

    monkeypatch.setattr(reg_mod.importlib.metadata, "entry_points", entry_points)

    def install(name: str, source: str) -> None:
        module = f"replaceme_test_{name.replace('-', '_')}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        extra.append(importlib.metadata.EntryPoint(name=name, value=module, group="replaceme"))
        reg_mod._cached.cache_clear()

    yield install
    monkeypatch.undo()
    reg_mod._cached.cache_clear()


def _info(name: str):
    return next(p for p in registry().plugins if p.name == name)


def test_misspelled_hook_is_named_and_skipped_and_every_command_works(installed, caplog, calib_file, tmp_path):
    installed("typo", GOOD_SELECTOR.format(cls="TypoSel", name="typo-selector") + """
@hookimpl
def register_methodz(register):
    raise AssertionError("never called")
""")
    with caplog.at_level("WARNING", logger="replaceme"):
        registry()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len([w for w in warnings if "'typo'" in w]) == 1
    runner = CliRunner()
    listing = runner.invoke(cli, ["methods", "--json"])
    assert listing.exit_code == 0, listing.output
    assert "typo-selector" not in {s["name"] for s in json.loads(listing.stdout)["selectors"]}
    assert "register_methodz" in _info("typo").error
    plugins = runner.invoke(cli, ["plugins", "--json"])
    assert plugins.exit_code == 0 and "typo" in {p["name"] for p in json.loads(plugins.stdout)}
    model_dir = tmp_path / "model"
    tiny_model("llama").save_pretrained(model_dir)
    from tiny import make_tokenizer

    make_tokenizer().save_pretrained(model_dir)
    pruned = runner.invoke(cli, ["prune", str(model_dir), "-m", "uidl", "-n", "1", "--calib", str(calib_file),
                                 "--calib-samples", "8", "--max-length", "32", "--output", str(tmp_path / "out")])
    assert pruned.exit_code == 0, pruned.output


def test_bad_signature_and_raising_plugins_are_isolated(installed, caplog):
    installed("badsig", """
from replaceme import hookimpl

@hookimpl
def register_methods(register, no_such_argument):
    pass
""")
    installed("raises", GOOD_SELECTOR.format(cls="RaisingSel", name="raising-selector") + """
@hookimpl
def register_methods(register):
    raise TypeError("boom")
""")
    installed("aaa-good", GOOD_SELECTOR.format(cls="GoodSel", name="good-selector"))
    with caplog.at_level("WARNING", logger="replaceme"):
        reg = registry()
    assert "no_such_argument" in _info("badsig").error
    assert _info("raises").error == "TypeError: boom"
    # everything a failing plugin registered is dropped, not only the failing hook's part
    assert "raising-selector" not in reg.selectors and "good-selector" in reg.selectors
    assert "uidl" in reg.methods
    names = [p.name for p in reg.plugins]
    builtin = [p.name for p in reg.plugins if p.builtin]
    assert names[: len(builtin)] == sorted(builtin) and "adapters" in builtin
    third = [n for n in names[len(builtin):] if n in ("aaa-good", "badsig", "raises")]
    assert third == ["aaa-good", "badsig", "raises"]


def test_only_hookimpl_functions_are_called():
    class Plain:
        def register_methods(self, register):  # no @hookimpl: not a hook implementation
            register(Method("plain-method", "angular-distance", "none", "remove"))

    with temporary_plugin("plain", Plain()):
        assert "plain-method" not in registry().methods
        assert _info("plain").error is None


@dataclass
class _SeedOpts:
    seed: int = option(0, "an option whose name clashes with prune(seed=...)")


class _SeededRange(Selector):
    name = "seeded-range"
    Options = _SeedOpts

    def candidates(self, ctx):
        return [Block(1, 1 + ctx.layers)]

    def select(self, stats, ctx):
        return Plan(self.candidates(ctx))


@pytest.fixture
def recipes():
    with temporary_plugin("recipes", selectors=[_SeededRange], methods=[
        Method("seeded", "seeded-range", "none", "remove"),
        Method("cosine-fast", "angular-distance", "cosine", defaults={"compensator": {"lr": 1e-3, "epochs": 2}}),
        Method("misspelled-default", "angular-distance", "cosine", defaults={"compensator": {"lrr": 1e-3}}),
    ]):
        yield


def test_stage_defaults_are_validated_and_dropped_with_their_stage(recipes, caplog):
    with caplog.at_level("WARNING", logger="replaceme"):
        reg = registry()
    assert "misspelled-default" not in reg.methods
    assert any("'recipes'" in r.getMessage() and "lrr" in r.getMessage() for r in caplog.records)
    own = resolve_method("cosine-fast")
    assert (own.compensator.options.lr, own.compensator.options.epochs) == (1e-3, 2)
    swapped = resolve_method("cosine-fast", compensator="trained-layer")
    assert swapped.compensator.options.lr == 2e-4  # trained-layer's own default, not the recipe's
    with pytest.raises(ValueError, match="keyed by stage"):
        Method("flat", "angular-distance", "cosine", defaults={"lr": 1e-3})


def test_incompatible_merger_is_one_line_before_any_work():
    with pytest.raises(ReplacemeError, match="merger 'remove' cannot write the 'linear' compensations") as err:
        resolve_method("uidl", compensator="lstsq", merger="remove")
    assert "\n" not in str(err.value)


def test_prune_keeps_method_options_apart_from_its_own_parameters(recipes, tokenizer):
    result = replaceme.prune(tiny_model("llama"), method="seeded", layers=1, tokenizer=tokenizer,
                             options={"seed": 5}, seed=0)
    assert result.options["selector:seeded-range"]["seed"] == 5 and result.seed == 0
    with pytest.raises(ReplacemeError, match="both in options= and as keywords"):
        replaceme.prune(tiny_model("llama"), method="replaceme-lstsq", tokenizer=tokenizer, options={"alpha": 1.0}, alpha=2.0)
    assert torch.get_num_threads() >= 1
