"""``replaceme methods``: list methods, their stages and options (no torch import)."""

from __future__ import annotations

import json

import click


def methods_catalog() -> dict:
    """Every method and stage with its options, JSON-able."""
    from replaceme.methods import stage_classes
    from replaceme.options import describe_options
    from replaceme.registry import registry

    reg = registry()

    def component(cls, kind: str) -> dict:
        return {"name": cls.name, "description": cls.description, "options": describe_options(cls.Options),
                "capabilities": cls.capabilities(), "plugin": reg.owners.get((kind, cls.name))}

    out = {"methods": [], "selectors": [], "compensators": [], "mergers": [], "healers": []}
    for kind in ("selectors", "compensators", "mergers", "healers"):
        out[kind] = [component(c, kind) for c in getattr(reg, kind).values()]
    for m in reg.methods.values():
        stages = list(stage_classes(reg, m).values())
        out["methods"].append({
            "name": m.name, "description": m.description, "reference": m.reference,
            "selector": m.selector, "compensator": m.compensator, "merger": stages[2].name, "healer": m.healer,
            "defaults": m.defaults, "plugin": reg.owners.get(("methods", m.name)),
            "options": [dict(o, default=m.defaults.get(o["name"], o["default"]), stage=s.name)
                        for s in stages for o in describe_options(s.Options)],
        })
    return out


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def methods(as_json: bool) -> None:
    """List pruning methods, their stages and their options.

    A method is a recipe: a selector (which blocks go), a compensator (what
    replaces them) and a merger (how it is written into the model). Stages can
    be mixed on the command line with --selector/--compensator; options are set
    with -o KEY VALUE. Healers (--heal NAME on prune and compare) train the pruned
    model back; their options are set with -o heal.KEY VALUE.
    """
    from replaceme.console import stdout, table

    catalog = methods_catalog()
    if as_json:
        click.echo(json.dumps(catalog, indent=2, default=str))
        return
    stdout.print(table("Methods", ["method", "selector", "compensator", "merger", "description"],
                       [[m["name"], m["selector"], m["compensator"], m["merger"], m["description"]] for m in catalog["methods"]]))
    for m in catalog["methods"]:
        if m["options"]:
            stdout.print(table(f"{m['name']} options", ["option", "stage", "type", "default", "help"],
                               [[o["name"], o["stage"], o["type"], o["default"], o["help"]] for o in m["options"]]))
    for kind in ("selectors", "compensators", "mergers", "healers"):
        stdout.print(table(kind.capitalize(), ["name", "plugin", "description"],
                           [[c["name"], c["plugin"], c["description"]] for c in catalog[kind]]))
    for h in catalog["healers"]:
        stdout.print(table(f"healer {h['name']} options (--heal {h['name']}; -o heal.KEY VALUE)",
                           ["option", "type", "default", "help"],
                           [[o["name"], o["type"], o["default"], o["help"]] for o in h["options"]]))
