"""The import graph of replaceme and its built-in plugins has no cycle.

Built statically with ``ast`` from every module, counting imports inside
functions too (a cycle through a function-level import still ties the modules
together); only ``if TYPE_CHECKING:`` blocks are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "replaceme", *sorted((ROOT / "plugins").glob("replaceme_*"))]


def _module_name(path: Path) -> str:
    base = ROOT / "plugins" if (ROOT / "plugins") in path.parents else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for src in SOURCES for p in src.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    out: set[str] = set()

    def target(module: str) -> str | None:
        while module and module not in known:
            module = module.rpartition(".")[0]
        return module or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(filter(None, (target(a.name) for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in known else target(base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    out.discard(None)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", known)
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "replaceme.api" in graph["replaceme"]  # imported inside __getattr__
    assert "replaceme.registry" in graph["replaceme.cli.plugins"]  # imported inside the command


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_adapters_know_nothing_of_plugins():
    graph = import_graph()
    assert not graph["replaceme.adapters"] & {"replaceme.registry", "replaceme.components", "replaceme.hookspecs"}


#: the layers, lowest first; a module may import its own layer and those below, never above
#: (not even inside a function). The first matching entry (module or package prefix) wins.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("replaceme.errors", "replaceme.schema", "replaceme.options", "replaceme.console", "replaceme.resources",
              "replaceme.provenance", "replaceme.outputs", "replaceme.paths", "replaceme.cache_location",
              "replaceme.escaping", "replaceme.formats", "replaceme.plots", "replaceme.hookspecs", "replaceme.hub_ids",
              "replaceme.settings",
              # plain data (blocks and plans): statistics are keyed by blocks
              "replaceme.plan")),
    ("model", ("replaceme.model_sources", "replaceme.adapters", "replaceme.loading", "replaceme.model_files", "replaceme.surgery", "replaceme.checkpoint",
               "replaceme.calibration", "replaceme.data", "replaceme.offload", "replaceme.demo")),
    ("stats", ("replaceme.stats",)),
    ("methods", ("replaceme.components", "replaceme.config_translator", "replaceme.registry", "replaceme.methods", "replaceme.scoring",
                 "replaceme.variant", "replaceme.distances", "replaceme.healer", "replaceme_")),
    ("evaluation", ("replaceme.evaluation",)),
    # what runs the stages: pipeline, API, compare, torchrun, the checks made before any work
    ("orchestration", ("replaceme.pipeline", "replaceme.passes", "replaceme.preflight", "replaceme.api", "replaceme.compare", "replaceme.distributed",
                       "replaceme.checks", "replaceme.model_card", "replaceme.reproduce", "replaceme.transforms", "replaceme.config_file", "replaceme.testing",
                       "replaceme.plugin", "replaceme.heal", "replaceme.healing", "replaceme.saving")),
    ("cli", ("replaceme.cli",)),
]


def layer_of(module: str) -> int:
    """The index of ``module``'s layer in :data:`LAYERS` (the package ``replaceme`` itself
    is the public entry point, at the orchestration layer)."""
    if module == "replaceme":
        return next(i for i, (name, _) in enumerate(LAYERS) if name == "orchestration")
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p if p.endswith("_") else p + ".") for p in prefixes):
            return index
    raise AssertionError(f"module {module} has no layer: add it to LAYERS in tests/test_import_graph.py")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a lower layer to a higher one, as ``a (layer) -> b (layer)``."""
    names = [name for name, _ in LAYERS]
    return sorted(f"{a} ({names[layer_of(a)]}) -> {b} ({names[layer_of(b)]})"
                  for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def test_upward_imports_are_found():
    assert upward_imports({"replaceme.stats.collect": {"replaceme.distributed", "replaceme.errors"}}) == [
        "replaceme.stats.collect (stats) -> replaceme.distributed (orchestration)"]
    assert upward_imports({"replaceme.cli.prune": {"replaceme.api"}, "replaceme_uidl": {"replaceme.components"}}) == []


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)


def test_no_import_points_up_a_layer():
    """base < model < stats < methods < evaluation < orchestration < cli (see CONTRIBUTING)."""
    upward = upward_imports(import_graph())
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_statistics_know_nothing_of_processes():
    """torch.distributed lives in replaceme.distributed (and the CLI's exit decision) only."""
    for path in (ROOT / "replaceme").rglob("*.py"):
        name = _module_name(path)
        if name == "replaceme.distributed" or name.startswith(("replaceme.distributed.", "replaceme.cli")):
            continue
        assert "torch.distributed" not in path.read_text(), f"{name} uses torch.distributed"
