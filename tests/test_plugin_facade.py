"""``replaceme.plugin`` is enough to write a plugin: one written against it alone
(its source imports nothing else of replaceme) runs in ``prune`` and ``compare``;
the facade stays free of torch at import; and the plugin contract's rules that
are derived rather than declared (capabilities, ``Merger.modifies``) hold."""

from __future__ import annotations

import ast
import copy
import json
import subprocess
import sys
import types

import pytest
import torch
from click.testing import CliRunner
from tiny import ROOT, calibration_text, tiny_model
from transformers import AutoModelForCausalLM

from replaceme.cli import cli

#: a complete plugin, as an author writes it: a selector, a compensator and a merger of its own
PLUGIN = '''
from dataclasses import dataclass

from replaceme.plugin import (Block, Compensator, Merger, Method, NoCompensation, Plan, Selector, StatsRequest,
                              hookimpl, option, remove_layers)


@dataclass
class FixedOptions:
    start: int = option(2, "first layer of the block")


class FixedSelector(Selector):
    name = "facade-fixed"
    description = "The block starting at `start`."
    Options = FixedOptions

    def candidates(self, ctx):
        return [Block(self.options.start, self.options.start + ctx.layers)]

    def stats_request(self, ctx):
        return StatsRequest(block_sizes={ctx.layers})

    def select(self, stats, ctx):
        (block,) = self.candidates(ctx)
        return Plan([block], scores=[float(stats.angular[ctx.layers][block.start])])


class Nothing(Compensator):
    name = "facade-nothing"
    description = "Nothing replaces the block."
    produces = NoCompensation
    default_merger = "facade-drop"


class Drop(Merger):
    name = "facade-drop"
    description = "Delete the blocks."
    accepts = (NoCompensation,)

    def merge(self, model, adapter, plan, compensations):
        remove_layers(model, adapter, {i for b in plan.blocks for i in range(b.start, b.end)})

    def modifies(self, plan, compensations):
        return set()


@hookimpl
def register_selectors(register):
    register(FixedSelector)


@hookimpl
def register_compensators(register):
    register(Nothing)


@hookimpl
def register_mergers(register):
    register(Drop)


@hookimpl
def register_methods(register):
    register(Method("facade-method", "facade-fixed", "facade-nothing", description="A fixed block, deleted."))
'''


def _replaceme_imports(source: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            modules.add(node.module or "")
        elif isinstance(node, ast.Import):
            modules.update(a.name for a in node.names)
    return {m for m in modules if m.split(".")[0] == "replaceme"}


@pytest.fixture
def facade_plugin(monkeypatch):
    from replaceme.plugin import temporary_plugin

    module = types.ModuleType("replaceme_facade_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    exec(compile(PLUGIN, "facade_example.py", "exec"), module.__dict__)
    with temporary_plugin("facade-example", module):
        yield


@pytest.fixture
def world(tmp_path, tokenizer):
    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir, calibration_text(tmp_path / "calib.txt", records=24)


def test_the_plugin_imports_only_the_facade():
    assert _replaceme_imports(PLUGIN) == {"replaceme.plugin"}


def test_a_facade_only_plugin_runs_in_prune(facade_plugin, world, tmp_path):
    model_dir, calib = world
    out = tmp_path / "pruned"
    result = CliRunner().invoke(cli, ["prune", str(model_dir), "-m", "facade-method", "-n", "2", "-o", "start", "3",
                                      "--calib", str(calib), "--calib-samples", "8", "--max-length", "32",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "pruning.json").read_text())
    assert meta["plan"]["blocks"] == [[3, 5]]
    # independent truth: the unpruned model with layers 3 and 4 deleted by hand
    truth = copy.deepcopy(tiny_model("llama"))
    truth.model.layers = torch.nn.ModuleList(layer for i, layer in enumerate(truth.model.layers) if i not in (3, 4))
    pruned = AutoModelForCausalLM.from_pretrained(out).eval()
    assert pruned.config.num_hidden_layers == 4
    ids = torch.tensor([[1, 5, 9, 14, 3, 22, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids, use_cache=False).logits, truth(ids, use_cache=False).logits)


def test_a_facade_only_plugin_runs_in_compare(facade_plugin, world, tmp_path):
    model_dir, calib = world
    args = ["compare", str(model_dir), "-m", "facade-method", "-m", "uidl", "--layers", "1", "--calib", str(calib),
            "--calib-samples", "8", "--max-length", "32", "--ppl", str(calib), "--context-length", "32", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"baseline", "facade-method", "uidl"}
    ppl = next(k for k in rows["baseline"] if k.startswith("ppl"))
    assert rows["facade-method"][ppl] > 0 and rows["facade-method"][ppl] != rows["baseline"][ppl]


def test_every_facade_name_resolves_and_importing_it_leaves_torch_out():
    import replaceme.plugin as facade

    for name in facade.__all__:
        assert getattr(facade, name) is not None, name
    code = "import sys, replaceme.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_shared_selector_helpers_live_in_the_core_and_keep_their_old_home():
    import replaceme_selectors

    from replaceme import plan
    from replaceme.components import SelectionContext

    for name in ("block_size", "blocks_of_size", "first_removable", "single_layers"):
        assert getattr(replaceme_selectors, name) is getattr(plan, name)
    ctx = SelectionContext(num_layers=6, layers=2, separate_blocks=True)
    assert [(b.start, b.end) for b in plan.single_layers(ctx, "x", keep_first=False)] == [(i, i + 1) for i in range(1, 6)]
    assert [(b.start, b.end) for b in plan.blocks_of_size(ctx, 2)] == [(s, s + 2) for s in range(1, 5)]


def test_capabilities_are_read_from_the_default_request():
    """needs_gram / needs_sample cannot drift from what stats_request asks for: a class
    attribute of that name is ignored, the listing reads the default request."""
    from replaceme.plugin import Block, Compensator, StatsRequest, temporary_plugin

    class Drifting(Compensator):
        name = "drifting"
        needs_gram = False  # says no, but asks for the Gram sums below
        needs_sample = True  # says yes, but asks for no sample

        def stats_request(self, candidates):
            return StatsRequest(gram_blocks={(b.start, b.end) for b in candidates})

    with temporary_plugin("drifting-test", compensators=[Drifting]):
        result = CliRunner().invoke(cli, ["methods", "--json"])
    assert result.exit_code == 0, result.output
    listed = {c["name"]: c["capabilities"] for c in json.loads(result.stdout)["compensators"]}
    assert listed["drifting"]["needs_gram"] is True and listed["drifting"]["needs_sample"] is False
    assert listed["lstsq"]["needs_gram"] is True and listed["lstsq"]["needs_sample"] is False
    assert listed["trained-layer"]["needs_sample"] is True and listed["none"]["needs_gram"] is False
    from replaceme.registry import registry

    for name, cls in registry().compensators.items():  # every built-in: the listing is its default request
        request = cls().stats_request([Block(1, 3)])
        assert listed[name]["needs_gram"] == bool(request.gram_blocks), name
        assert listed[name]["needs_sample"] == (request.sample_tokens > 0), name


def test_a_merger_without_modifies_is_warned_about_once_and_treated_as_writing_everywhere(caplog):
    from replaceme.plugin import Merger, Method, NoCompensation, temporary_plugin
    from replaceme.registry import registry

    class Old(Merger):
        name = "old-remove"
        accepts = (NoCompensation,)

        def merge(self, model, adapter, plan, compensations):
            raise AssertionError("not called here")

    with temporary_plugin("old-plugin", mergers=[Old], methods=[Method("old", "angular-distance", "none", "old-remove")]):
        with caplog.at_level("WARNING", logger="replaceme"):
            reg = registry()
        warned = [r.getMessage() for r in caplog.records if "old-remove" in r.getMessage()]
        assert len(warned) == 1 and "'old-plugin'" in warned[0] and "modifies" in warned[0]
        assert "old" in reg.methods  # still usable
        assert Old().modifies(None, []) is None  # unknown: compare copies every layer, --offload refuses it


def test_the_fake_plugin_and_contributing_import_only_the_facade():
    fake = (ROOT / "tests" / "fake_plugin" / "replaceme_fake" / "__init__.py").read_text()
    assert _replaceme_imports(fake) == {"replaceme.plugin"}
    text = (ROOT / "CONTRIBUTING.md").read_text()
    import re

    blocks = re.findall(r"```python\n(.+?)\n```", text, flags=re.S)
    imports = set().union(*(_replaceme_imports(b) for b in blocks))
    assert imports == {"replaceme.plugin"}, imports


def test_config_files_accept_the_options_the_registry_knows(tmp_path):
    """--config takes its option names from the registry: a plugin's option is accepted
    while the plugin is registered and refused once it is gone; built-in options that a
    hand-written list used to miss (trained-layer's warmup) are accepted."""
    from dataclasses import dataclass

    from replaceme.config_file import read_config
    from replaceme.errors import ReplacemeError
    from replaceme.plugin import Block, Plan, Selector, option, temporary_plugin

    @dataclass
    class KnobOptions:
        facade_knob: int = option(1, "a knob")

    class Knob(Selector):
        name = "facade-knob"
        Options = KnobOptions

        def candidates(self, ctx):
            return [Block(1, 1 + ctx.layers)]

        def select(self, stats, ctx):
            return Plan(self.candidates(ctx))

    config = tmp_path / "run.yaml"
    config.write_text("method: uidl\nfacade_knob: 3\nwarmup: 5\n")
    with temporary_plugin("knob-test", selectors=[Knob]):
        params, options = read_config(config)
    assert params["method"] == "uidl" and options == {"facade_knob": 3, "warmup": 5}
    with pytest.raises(ReplacemeError, match="unknown key 'facade_knob'"):
        read_config(config)
