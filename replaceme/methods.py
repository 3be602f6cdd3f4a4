"""Resolving a method name and user options into configured components."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from replaceme.components import Compensator, Merger, Method, SelectionContext, Selector
from replaceme.errors import ReplacemeError, did_you_mean
from replaceme.healer import Healer
from replaceme.options import ignored_options, option_fields, options_to_dict, parse_options
from replaceme.plan import Block
from replaceme.registry import Registry, check_compatible, registry, stage_classes
from replaceme.stats.request import StatsRequest

log = logging.getLogger(__name__)


@dataclass
class ResolvedMethod:
    """A method with its components instantiated and their options parsed.

    Attributes:
        label: the name shown in tables (the method name, or the stage mix).
        method: the recipe it came from.
        selector, compensator, merger: configured component instances.
        user_options: the options the user gave (before defaults), for provenance.
        swapped: stage -> the component name that replaced the recipe's (``--selector``,
            ``--compensator``), None for the recipe's own.
        ignored: option -> why the configuration in effect does not read it.
        healer: the configured healer (None: training-free).
    """

    label: str
    method: Method
    selector: Selector
    compensator: Compensator
    merger: Merger
    user_options: dict[str, Any] = field(default_factory=dict)
    swapped: dict[str, str | None] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    healer: Healer | None = None

    def recipe(self) -> dict[str, Any]:
        """How the method was asked for, for ``pruning.json``: the recipe's name, the swapped
        stages, the options as the user gave them, the recipe's defaults that applied, and the
        given options that do nothing here."""
        return {
            "method": self.method.name,
            "selector": self.swapped.get("selector"),
            "compensator": self.swapped.get("compensator"),
            "merger": self.swapped.get("merger"),
            "healer": self.healer.name if self.healer is not None else None,
            "options_given": dict(self.user_options),
            "defaults": {stage: dict(values) for stage, values in self.method.defaults.items()
                         if not self.swapped.get(stage) and values},
            "ignored_options": dict(self.ignored),
        }

    def stages(self) -> dict[str, dict[str, Any]]:
        """Each stage's component and the installed distribution (and version) that provides it."""
        from replaceme.provenance import distribution_of

        return {stage: {"name": comp.name, **distribution_of(comp)}
                for stage, comp in (("selector", self.selector), ("compensator", self.compensator),
                                    ("merger", self.merger), ("healer", self.healer)) if comp is not None}

    def selection_context(self, num_layers: int, layers: int) -> SelectionContext:
        comp = self.compensator
        return SelectionContext(num_layers, layers, comp.layers_added_per_block, comp.needs_layer_before)

    def candidates(self, num_layers: int, layers: int) -> list[Block]:
        return self.selector.candidates(self.selection_context(num_layers, layers))

    def stats_request(self, num_layers: int, layers: int) -> StatsRequest:
        ctx = self.selection_context(num_layers, layers)
        return self.selector.stats_request(ctx).union(self.compensator.stats_request(self.selector.candidates(ctx)))

    def options(self) -> dict[str, Any]:
        """Every option value in effect, by component."""
        return {
            f"selector:{self.selector.name}": options_to_dict(self.selector.options),
            f"compensator:{self.compensator.name}": options_to_dict(self.compensator.options),
            f"merger:{self.merger.name}": options_to_dict(self.merger.options),
            **({f"healer:{self.healer.name}": options_to_dict(self.healer.options)} if self.healer else {}),
        }

    def check_model(self, adapter: Any) -> None:
        """Refuse, before the weights load, a method that cannot be expressed on this architecture
        (every stage is asked, the healer too; see :mod:`replaceme.preflight`)."""
        for stage in (self.selector, self.compensator, self.merger, self.healer):
            if stage is not None:
                stage.check_model(adapter)

    def check_modules(self, model: Any, adapter: Any) -> None:
        """Refuse, before the weights load, a method whose stages cannot work on the module tree
        of ``model`` (an empty model built from ``config.json``, or the loaded one)."""
        for stage in (self.selector, self.compensator, self.merger, self.healer):
            if stage is not None:
                stage.check_modules(model, adapter)

    def check_offload(self) -> None:
        """Refuse, before the model loads, a method whose stages cannot run with ``--offload``
        (a healer never can: it trains the whole model)."""
        for stage in (self.selector, self.compensator, self.merger):
            stage.check_offload()
        if self.healer is not None:
            raise ReplacemeError(f"{self.label}: healing needs the whole model in memory, not --offload")


def resolve_method(
    name: str,
    options: dict[str, Any] | None = None,
    *,
    selector: str | None = None,
    compensator: str | None = None,
    merger: str | None = None,
    healer: str | None = None,
    reg: Registry | None = None,
    strict: bool = False,
) -> ResolvedMethod:
    """Instantiate method ``name``, optionally with stages swapped, with ``options``.

    Each option key goes to every stage whose options declare it; a key no stage
    declares is an error with a did-you-mean. The recipe's defaults apply first,
    each only to the stage it was written for, and not at all to a swapped stage.
    A compensator whose compensation the merger cannot write is a one-line error.
    A given option that the configuration in effect does not read (see
    :func:`replaceme.options.ignored_options`) is a warning, or with ``strict`` an error.

    ``healer`` names the healing stage (``"none"``: training-free even if the recipe
    names a healer; None: the recipe's healer, if any). Healer options are written
    ``heal.KEY`` or, when no other stage declares ``KEY``, plain ``KEY``.
    """
    reg = reg or registry()
    method = reg.method(name)
    options = dict(options or {})
    heal_name = method.healer if healer is None else (None if healer == "none" else healer)
    heal_cls = reg.get("healers", heal_name) if heal_name else None
    classes = stage_classes(reg, method, selector=selector, compensator=compensator, merger=merger)
    fields = {stage: option_fields(cls.Options) for stage, cls in classes.items()}
    known = set().union(*fields.values())
    options, heal_values = split_heal_options(name, options, heal_cls, known)
    for key in options:
        if key not in known:
            heal_known = {f"heal.{k}" for k in option_fields(heal_cls.Options)} if heal_cls else set()
            raise ReplacemeError(
                f"method '{name}': unknown option '{key}'{did_you_mean(key, known | heal_known)}; "
                f"options are: {', '.join(sorted(known | heal_known)) or '(none)'}"
            )
    check_compatible(classes["compensator"], classes["merger"])
    swapped = {"selector": selector, "compensator": compensator, "merger": merger if merger else compensator}
    instances, ignored = {}, {}
    for stage, cls in classes.items():
        values = {} if swapped[stage] else dict(method.defaults.get(stage, {}))
        values.update({k: v for k, v in options.items() if k in fields[stage]})
        instances[stage] = cls(parse_options(cls.Options, values, f"{stage} '{cls.name}'"))
        ignored.update(ignored_options(instances[stage].options, values))  # the recipe's defaults too
    for key, reason in ignored.items():
        given = "option" if key in options else "recipe default"
        message = f"method '{name}': {given} '{key}' does nothing here: it is {reason}"
        if strict:
            raise ReplacemeError(message + " (--strict)")
        log.warning("%s; recorded as ignored", message)
    label = name
    if selector or compensator or merger:
        label = f"{instances['selector'].name}+{instances['compensator'].name}"
    heal_instance = None
    if heal_cls is not None:
        values = dict(method.defaults.get("healer", {})) if heal_name == method.healer else {}
        values.update(heal_values)
        heal_instance = heal_cls(parse_options(heal_cls.Options, values, f"healer '{heal_cls.name}'"))
        label = f"{label}+{heal_cls.name}"
    user = {**options, **{f"heal.{k}": v for k, v in heal_values.items()}}
    return ResolvedMethod(label, method, instances["selector"], instances["compensator"], instances["merger"], user,
                          {stage: swapped[stage] if stage != "merger" else merger for stage in swapped}, ignored,
                          heal_instance)


def split_heal_options(name: str, options: dict[str, Any], healer: type[Healer] | None,
                       stage_fields: set[str]) -> tuple[dict, dict]:
    """``(method options, healer options)``: ``heal.KEY`` goes to the healer, and so does a
    plain ``KEY`` the healer declares and no other stage of the method (``stage_fields``)
    does; a key both declare is ambiguous: a one-line error asks for ``heal.KEY``."""
    heal_fields = option_fields(healer.Options) if healer is not None else {}
    rest, heal = {}, {}
    for key, value in options.items():
        if key.startswith("heal."):
            if healer is None:
                raise ReplacemeError(f"option '{key}' is for a healer, but no healer is used (--heal NAME)")
            heal[key[len("heal."):]] = value
        elif key in heal_fields and key not in stage_fields:
            heal[key] = value
        elif key in heal_fields:
            raise ReplacemeError(f"option '{key}' is declared both by a stage of method '{name}' and by healer "
                                 f"'{healer.name}': write -o heal.{key} VALUE for the healer")
        else:
            rest[key] = value
    return rest, heal


def declares_option(name: str, key: str, *, selector: str | None = None, compensator: str | None = None) -> bool:
    """Whether method ``name`` (with optional stage swaps) has an option ``key``."""
    reg = registry()
    stages = stage_classes(reg, reg.method(name), selector=selector, compensator=compensator).values()
    return any(key in option_fields(stage.Options) for stage in stages)
