"""The ``replaceme`` command line.

Each command lives in its own module and is imported only when it runs, so that
``replaceme --help`` and ``replaceme methods`` start fast and never import torch.
"""

from __future__ import annotations

import importlib
import logging
import os

import click

from replaceme.errors import ReplacemeError

#: command name -> "module:attribute" (imported lazily)
COMMANDS: dict[str, str] = {
    "methods": "replaceme.cli.methods:methods",
    "plugins": "replaceme.cli.plugins:plugins",
    "distances": "replaceme.cli.distances:distances",
    "prune": "replaceme.cli.prune:prune",
    "evaluate": "replaceme.cli.evaluate:evaluate",
    "compare": "replaceme.cli.compare:compare",
}

_HELP = {
    "methods": "List pruning methods and their components and options.",
    "plugins": "List installed replaceme plugins with their versions.",
    "distances": "Show the distance of every candidate block of layers.",
    "prune": "Prune a model with one method and save it as a standard model directory.",
    "evaluate": "Evaluate a model: perplexity and lm-eval tasks.",
    "compare": "Compare several pruning methods on the same model, data and evaluation.",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        """Run the command; a :class:`ReplacemeError` becomes one line and exit status 2.

        Under ``torchrun`` only rank 0 prints it (every rank gets the same error and
        exits 2), and a rank > 0 that has delivered its share of the work exits 0.
        """
        from replaceme.distributed import RankDone, world

        try:
            return super().invoke(ctx)
        except RankDone:
            ctx.exit(0)
        except ReplacemeError as exc:
            if not world().is_root:
                ctx.exit(2)
            error = click.ClickException(str(exc))
            error.exit_code = 2
            raise error from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _HELP[name]) for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="replaceme")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Depth pruning of transformer language models.

    Remove blocks of consecutive decoder layers from a Hugging Face causal LM,
    optionally compensating with a linear map (ReplaceMe) or a trained layer
    (LLM-Streamline), and compare methods fairly on the same data.

    \b
    Quick start (no hub, no GPU needed):
      replaceme compare                 # all built-in methods on the demo model
      replaceme methods                 # what can prune
      replaceme prune MODEL --method replaceme-lstsq --layers 8 \\
          --calib DATA --output pruned/
    """
    from replaceme.console import setup_logging

    setup_logging(verbose)


def main() -> None:
    """Console entry point.

    OpenMP threads wait passively unless the user says otherwise: with busy-waiting,
    torch on a machine that is running anything else (measured here on 2 cores)
    slowed the calibration pass by more than 10×; on an idle machine passive
    waiting costs next to nothing.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cli(prog_name="replaceme")


logging.getLogger("replaceme").addHandler(logging.NullHandler())
