"""Named models (the demo, or a package's own) are registered sources: the loader
reaches them through the ``replaceme.models`` entry points, never by importing the
package that provides them."""

from __future__ import annotations

import importlib.metadata

import pytest
from test_import_graph import import_graph

import replaceme.model_sources as sources
from replaceme.loading import load_model, local_model_dir, resolve_model_path


@pytest.fixture
def extra_source(monkeypatch, tiny_dir):
    """Register ``tiny-source`` (a throwaway entry point) whose callable returns ``tiny_dir``."""
    import sys
    import types

    module = types.ModuleType("replaceme_tiny_source")
    module.where = lambda: tiny_dir
    monkeypatch.setitem(sys.modules, module.__name__, module)
    entry = importlib.metadata.EntryPoint(name="tiny-source", value="replaceme_tiny_source:where", group=sources.GROUP)
    real = importlib.metadata.entry_points

    def entry_points(group=None, **kw):
        return list(real(group=group)) + [entry] if group == sources.GROUP else real(group=group, **kw)

    monkeypatch.setattr(sources.importlib.metadata, "entry_points", entry_points)
    sources._sources.cache_clear()
    yield tiny_dir
    sources._sources.cache_clear()


def test_the_demo_is_a_registered_source():
    from replaceme.demo import demo_model_dir

    assert "demo" in sources.source_names()
    assert resolve_model_path("Demo") == str(demo_model_dir())  # names match case-insensitively
    assert local_model_dir("demo") == demo_model_dir()


def test_a_directory_named_like_a_source_is_reached_with_its_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sources.registered_name("./demo") is None and sources.registered_name("demo") == "demo"


def test_a_package_registers_its_own_model(extra_source):
    model, tokenizer = load_model("tiny-source", device="cpu")
    assert model.config.num_hidden_layers == 6 and tokenizer is not None
    assert local_model_dir("TINY-SOURCE") == extra_source


def test_the_loader_and_the_checks_do_not_import_the_demo():
    graph = import_graph()
    for module in ("replaceme.loading", "replaceme.checks", "replaceme.offload.load"):
        assert not {m for m in graph[module] if m.startswith("replaceme.demo")}, module
