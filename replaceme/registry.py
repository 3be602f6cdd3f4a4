"""Plugin discovery and the registry of components.

Plugins are found through the ``replaceme`` entry-point group (built-ins are
registered the same way as third-party packages). A plugin that fails to import
is named in a warning and skipped; two plugins registering the same name is an
error that names both.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pluggy

from replaceme import hookspecs
from replaceme.components import Compensator, Merger, Method, Selector
from replaceme.errors import ReplacemeError, unknown

log = logging.getLogger(__name__)
_KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, for ``replaceme plugins``."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    error: str | None = None
    contributes: list[str] = field(default_factory=list)


@dataclass
class Registry:
    """Every registered component, by kind and name."""

    selectors: dict[str, type[Selector]] = field(default_factory=dict)
    compensators: dict[str, type[Compensator]] = field(default_factory=dict)
    mergers: dict[str, type[Merger]] = field(default_factory=dict)
    methods: dict[str, Method] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    owners: dict[tuple[str, str], str] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> Any:
        table = getattr(self, kind)
        if name not in table:
            raise unknown(kind.rstrip("s"), name, table)
        return table[name]

    def method(self, name: str) -> Method:
        return self.get("methods", name)

    def builtin_methods(self) -> list[str]:
        """Methods shipped with replaceme itself, uncompensated ones first, then by cost."""
        builtin = {p.name for p in self.plugins if p.distribution == "replaceme"}
        names = [n for n in self.methods if self.owners.get(("methods", n)) in builtin]

        def cost(name: str) -> tuple:
            comp = self.compensators[self.methods[name].compensator]
            return (comp.name != "none", comp.needs_training, name)

        return sorted(names, key=cost)


def make_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("replaceme")
    pm.add_hookspecs(hookspecs)
    from replaceme import adapters

    pm.register(adapters, name="replaceme.adapters")
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> list[PluginInfo]:
    infos = []
    for ep in importlib.metadata.entry_points(group="replaceme"):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.name if dist else None,
            version=dist.version if dist else None,
        )
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break the tool
            info.error = f"{type(exc).__name__}: {exc}"
            log.warning("plugin '%s' (%s) failed to load and is skipped: %s", ep.name, ep.value, info.error)
        else:
            if pm.is_registered(plugin):
                continue
            pm.register(plugin, name=ep.name)
        infos.append(info)
    pm.check_pending()
    return infos


def build_registry(pm: pluggy.PluginManager, infos: list[PluginInfo] | None = None) -> Registry:
    """Ask every registered plugin for its components."""
    reg = Registry(plugins=list(infos or []))
    by_name = {i.name: i for i in reg.plugins}

    def collector(kind: str, base: type | None, plugin_name: str):
        table = getattr(reg, kind)

        def register(item: Any) -> None:
            name = item.name
            if base is not None and not (isinstance(item, type) and issubclass(item, base)):
                raise ReplacemeError(f"plugin '{plugin_name}' registered {item!r} as a {kind[:-1]}, not a {base.__name__}")
            if not _KEBAB.match(name or ""):
                raise ReplacemeError(f"plugin '{plugin_name}': {kind[:-1]} name {name!r} is not kebab-case")
            if name in table:
                other = reg.owners[(kind, name)]
                raise ReplacemeError(
                    f"{kind[:-1]} '{name}' is registered by two plugins: '{other}' and '{plugin_name}'"
                )
            table[name] = item
            reg.owners[(kind, name)] = plugin_name
            if plugin_name in by_name:
                by_name[plugin_name].contributes.append(f"{kind[:-1]}:{name}")

        return register

    for kind, base in (
        ("selectors", Selector),
        ("compensators", Compensator),
        ("mergers", Merger),
        ("methods", None),
    ):
        for plugin in pm.get_plugins():
            hook_impls = getattr(plugin, f"register_{kind}", None)
            if hook_impls is None:
                continue
            name = pm.get_name(plugin) or repr(plugin)
            hook_impls(register=collector(kind, base, name))
    _check_methods(reg)
    return reg


def _check_methods(reg: Registry) -> None:
    for method in reg.methods.values():
        for kind, name in (("selectors", method.selector), ("compensators", method.compensator)):
            if name not in getattr(reg, kind):
                raise ReplacemeError(f"method '{method.name}' uses unknown {kind[:-1]} '{name}'")
        if method.merger and method.merger not in reg.mergers:
            raise ReplacemeError(f"method '{method.name}' uses unknown merger '{method.merger}'")


_extra_plugins: list[tuple[Any, str]] = []


def register_plugin(plugin: Any, name: str) -> None:
    """Register an in-process plugin (tests, notebooks) and rebuild the registry."""
    _extra_plugins.append((plugin, name))
    _cached.cache_clear()


def unregister_plugin(name: str) -> None:
    """Undo :func:`register_plugin`."""
    _extra_plugins[:] = [(p, n) for p, n in _extra_plugins if n != name]
    _cached.cache_clear()


@lru_cache(maxsize=1)
def _cached() -> tuple[pluggy.PluginManager, Registry]:
    pm = make_plugin_manager()
    infos = _load_entry_points(pm)
    for plugin, name in _extra_plugins:
        pm.register(plugin, name=name)
        infos.append(PluginInfo(name=name, module=getattr(plugin, "__name__", repr(plugin)), distribution=None, version=None))
    return pm, build_registry(pm, infos)


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (plugins loaded once)."""
    return _cached()[0]


def registry() -> Registry:
    """The process-wide registry of components."""
    return _cached()[1]
