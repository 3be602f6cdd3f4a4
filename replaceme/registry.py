"""Plugin discovery and the registry of components.

Plugins are found through the ``replaceme`` entry-point group; the built-ins
(shipped in the ``replaceme`` distribution) are registered the same way as
third-party packages. Registration goes through pluggy's own hook calls, so
only ``@hookimpl`` functions are called and hooks can grow by new arguments.

Order is deterministic: built-in plugins first, then third-party ones, each
group by plugin name, then in-process plugins (:func:`register_plugin`) in the
order they were added.

A plugin is *isolated*: if it fails to import, fails pluggy's validation (an
unknown hook such as ``register_methodz``, an argument the hook does not
have), raises while registering, or registers something invalid (a name that
is not kebab-case, a name another plugin already took, a method whose stage
defaults do not fit the stage), it is named in one warning and skipped, with
everything it contributed; every command still works.
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
from replaceme.components import Compensator, Merger, Method, NoCompensation, Selector
from replaceme.config_translator import ConfigTranslator
from replaceme.errors import ReplacemeError, unknown
from replaceme.healer import Healer
from replaceme.options import parse_options

log = logging.getLogger(__name__)
_KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
#: distribution whose entry points are the built-in plugins
BUILTIN_DISTRIBUTION = "replaceme"
#: registration hooks, in the order they are called, with the kind they fill
_KINDS: tuple[tuple[str, type | None], ...] = (
    ("selectors", Selector),
    ("compensators", Compensator),
    ("mergers", Merger),
    ("methods", Method),
    ("healers", Healer),
    ("config_translators", ConfigTranslator),
)
#: kinds registered as instances (the others are classes)
_INSTANCES = {"methods", "config_translators"}


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, for ``replaceme plugins``."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    error: str | None = None
    contributes: list[str] = field(default_factory=list)

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION


@dataclass
class Registry:
    """Every registered component, by kind and name."""

    selectors: dict[str, type[Selector]] = field(default_factory=dict)
    compensators: dict[str, type[Compensator]] = field(default_factory=dict)
    mergers: dict[str, type[Merger]] = field(default_factory=dict)
    methods: dict[str, Method] = field(default_factory=dict)
    healers: dict[str, type[Healer]] = field(default_factory=dict)
    config_translators: dict[str, ConfigTranslator] = field(default_factory=dict)
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
        builtin = {p.name for p in self.plugins if p.builtin}
        names = [n for n in self.methods if self.owners.get(("methods", n)) in builtin]

        def cost(name: str) -> tuple:
            comp = self.compensators[self.methods[name].compensator]
            return (comp.produces is not NoCompensation, comp.needs_training, name)

        return sorted(names, key=cost)


def make_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager that knows the hook specifications, with no plugin yet."""
    pm = pluggy.PluginManager("replaceme")
    pm.add_hookspecs(hookspecs)
    return pm


@dataclass
class _Candidate:
    """A plugin to register: its info, and the object (None when it failed to import)."""

    info: PluginInfo
    plugin: Any = None


def _entry_point_candidates() -> list[_Candidate]:
    """Every entry point of the group, imported; built-ins first, then by name."""
    out = []
    for ep in importlib.metadata.entry_points(group="replaceme"):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(ep.name, ep.value, dist.name if dist else None, dist.version if dist else None)
        candidate = _Candidate(info)
        try:
            candidate.plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break the tool
            _fail(info, exc, "failed to load")
        out.append(candidate)
    return sorted(out, key=lambda c: (not c.info.builtin, c.info.name))


def _fail(info: PluginInfo, exc: BaseException, what: str) -> None:
    info.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"  # one line
    log.warning("plugin '%s' (%s) %s and is skipped: %s", info.name, info.module, what, info.error)


def _check_hooks(pm: pluggy.PluginManager, plugin: Any) -> None:
    """``check_pending`` for one plugin: every hook it implements must be specified."""
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not impl.optionalhook:
                raise pluggy.PluginValidationError(plugin, f"unknown hook '{caller.name}'")


class _Staging:
    """Components one plugin registers, committed only if the whole plugin succeeds."""

    def __init__(self, reg: Registry, plugin_name: str):
        self.reg, self.plugin_name = reg, plugin_name
        self.items: list[tuple[str, str, Any]] = []

    def register_fn(self, kind: str, base: type | None):
        def register(item: Any) -> None:
            name = getattr(item, "name", None)
            ok = isinstance(item, base) if kind in _INSTANCES else isinstance(item, type) and issubclass(item, base)
            if not ok:
                raise ReplacemeError(f"registered {item!r} as a {kind[:-1]}, not a {base.__name__}")
            if not _KEBAB.match(name or ""):
                raise ReplacemeError(f"{kind[:-1]} name {name!r} is not kebab-case")
            taken = self.reg.owners.get((kind, name)) or (self.plugin_name if any(
                k == kind and n == name for k, n, _ in self.items) else None)
            if taken:
                raise ReplacemeError(f"{kind[:-1]} '{name}' is already registered by plugin '{taken}'")
            if kind == "config_translators":
                self._check_translator(item)
            if kind == "mergers" and not item.declares_modifies():
                log.warning("plugin '%s': merger '%s' does not define modifies() (required; deprecated fallback): "
                            "compare copies every decoder layer for it and prune --offload refuses it",
                            self.plugin_name, name)
            self.items.append((kind, name, item))

        return register

    def _check_translator(self, translator: ConfigTranslator) -> None:
        """A reference key or method name belongs to one translator only."""
        others = list(self.reg.config_translators.values()) + [t for k, _, t in self.items if k == "config_translators"]
        for other in others:
            for what, mine, theirs in (("key", translator.keys, other.keys), ("method", translator.methods, other.methods)):
                shared = sorted(set(mine) & set(theirs))
                if shared:
                    raise ReplacemeError(f"reference {what} '{shared[0]}' is already translated by '{other.name}'")
        extra = sorted(set(translator.marks_reference) - set(translator.keys))
        if extra:
            raise ReplacemeError(f"config translator '{translator.name}' marks undocumented key '{extra[0]}'")

    def commit(self, info: PluginInfo | None) -> None:
        for kind, name, item in self.items:
            getattr(self.reg, kind)[name] = item
            self.reg.owners[(kind, name)] = self.plugin_name
            if info is not None:
                info.contributes.append(f"{kind[:-1]}:{name}")


def _register_one(pm: pluggy.PluginManager, reg: Registry, candidate: _Candidate) -> None:
    """Register one plugin with pluggy and collect its components; on any failure
    the plugin is unregistered, named in a warning and skipped."""
    info, plugin = candidate.info, candidate.plugin
    if plugin is None or pm.is_registered(plugin):
        return
    others = list(pm.get_plugins())
    try:
        pm.register(plugin, name=info.name)
    except Exception as exc:
        _fail(info, exc, "failed validation")
        return
    try:
        _check_hooks(pm, plugin)
    except Exception as exc:
        pm.unregister(plugin)
        _fail(info, exc, "failed validation")
        return
    try:
        staging = _Staging(reg, info.name)
        for kind, base in _KINDS:
            caller = pm.subset_hook_caller(f"register_{kind}", remove_plugins=others)
            caller(register=staging.register_fn(kind, base))
    except Exception as exc:
        pm.unregister(plugin)
        _fail(info, exc, "failed to register")
        return
    staging.commit(info)


def check_compatible(compensator: type[Compensator], merger: type[Merger]) -> None:
    """The merger must accept what the compensator produces (one line otherwise)."""
    if not issubclass(compensator.produces, merger.accepts):
        accepted = ", ".join(c.kind for c in merger.accepts)
        raise ReplacemeError(
            f"merger '{merger.name}' cannot write the '{compensator.produces.kind}' compensations of "
            f"compensator '{compensator.name}' (it accepts: {accepted})"
        )


def check_defaults(reg: Registry, method: Method) -> None:
    """Registration check: the recipe's stages exist, its merger accepts its
    compensator's output, and its defaults are valid options of their stage."""
    classes: dict[str, type] = stage_classes(reg, method)
    check_compatible(classes["compensator"], classes["merger"])
    if method.healer is not None:
        classes["healer"] = reg.get("healers", method.healer)
    elif "healer" in method.defaults:
        raise ReplacemeError("has defaults for the healer stage but names no healer")
    for stage, values in method.defaults.items():
        cls = classes[stage]
        parse_options(cls.Options, dict(values), f"defaults for {stage} '{cls.name}'")


def stage_classes(reg: Registry, method: Method, *, selector: str | None = None, compensator: str | None = None,
                  merger: str | None = None) -> dict[str, type]:
    """The selector, compensator and merger classes of ``method`` with optional swaps.

    Swapping the compensator also drops the recipe's merger for the new
    compensator's default, unless a merger is named.
    """
    comp = reg.get("compensators", compensator or method.compensator)
    merger_name = merger or (method.merger if compensator is None else None) or comp.default_merger
    if merger_name is None:
        raise ReplacemeError(f"compensator '{comp.name}' names no default merger and method '{method.name}' none either")
    return {
        "selector": reg.get("selectors", selector or method.selector),
        "compensator": comp,
        "merger": reg.get("mergers", merger_name),
    }


def _check_methods(reg: Registry) -> None:
    """Drop (with a warning naming the plugin) methods whose stages are missing or
    whose stage defaults do not fit the stage's options."""
    by_name = {p.name: p for p in reg.plugins}
    for name, method in list(reg.methods.items()):
        owner = reg.owners.get(("methods", name), "?")
        try:
            check_defaults(reg, method)
        except ReplacemeError as exc:
            del reg.methods[name]
            log.warning("plugin '%s': method '%s' is skipped: %s", owner, name, exc)
            if owner in by_name:
                by_name[owner].error = f"method '{name}': {exc}"


def build_registry(pm: pluggy.PluginManager, candidates: list[_Candidate]) -> Registry:
    """Register ``candidates`` in order with ``pm`` and collect their components."""
    reg = Registry(plugins=[c.info for c in candidates])
    for candidate in candidates:
        _register_one(pm, reg, candidate)
    _check_methods(reg)
    return reg


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
    candidates = _entry_point_candidates()
    candidates += [
        _Candidate(PluginInfo(name, getattr(plugin, "__name__", type(plugin).__name__), None, None), plugin)
        for plugin, name in _extra_plugins
    ]
    return pm, build_registry(pm, candidates)


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (plugins loaded once)."""
    return _cached()[0]


def registry() -> Registry:
    """The process-wide registry of components."""
    return _cached()[1]


def adapter_for(model: Any) -> Any:
    """Ask the plugins (``model_adapter`` hook) for the :class:`~replaceme.adapters.ModelAdapter`
    of ``model``; a one-line error when none knows it."""
    adapter = plugin_manager().hook.model_adapter(model=model)
    if adapter is None:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        hint = "a plugin can add one through the model_adapter hook"
        if not any(p.name == "adapters" and p.error is None for p in registry().plugins):
            hint = "the built-in adapters plugin is not installed: reinstall replaceme (pip install -e .)"
        raise ReplacemeError(f"unsupported architecture '{model_type}' ({hint})")
    return adapter
