"""``replaceme plugins``: installed plugins, versions and what they contribute."""

from __future__ import annotations

import dataclasses
import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List installed replaceme plugins (entry-point group 'replaceme').

    A plugin that failed to import is listed with its error and skipped.
    """
    from replaceme.console import stdout, table
    from replaceme.registry import registry

    infos = registry().plugins
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return
    stdout.print(table("Plugins", ["name", "module", "distribution", "version", "contributes", "error"],
                       [[i.name, i.module, i.distribution, i.version, ", ".join(i.contributes), i.error] for i in infos]))
