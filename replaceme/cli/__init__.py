"""The ``replaceme`` command line.

Each command lives in its own module and is imported only when it runs, so that
``replaceme --help`` and ``replaceme methods`` start fast and never import torch.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback

import click

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
        command = getattr(importlib.import_module(module), attr)
        if not any(p.name == "verbose" for p in command.params):  # -v works after the command name too
            command.params.append(click.Option(["-v", "--verbose"], count=True, expose_value=False, is_eager=True,
                                               callback=_more_verbose, help="More log output (-vv for debug)."))
        return command

    def invoke(self, ctx: click.Context):
        """Run the command. Under ``torchrun`` a rank > 0 that has delivered its share
        of the work exits 0; errors go to :meth:`main`, where only rank 0 prints them."""
        from replaceme.distributed import RankDone

        try:
            return super().invoke(ctx)
        except RankDone:
            ctx.exit(0)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        """The error boundary: whatever escapes a command becomes one line on stderr.

        Our own errors (:class:`ReplacemeError`), click's usage errors and library
        errors caused by the user's files exit 2; anything unexpected exits 1 with
        a hint to rerun with ``--debug`` (which prints the traceback) and report it.
        Ctrl-C, SIGTERM and SIGHUP unwind the command (locks released, temporaries
        removed: see :mod:`replaceme.cli.signals`) and exit 128 + the signal's number.
        """
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv[: _first_command(argv)] or os.environ.get("REPLACEME_DEBUG", "") not in ("", "0")
        from replaceme.cli.signals import terminating_like_ctrl_c

        try:
            with terminating_like_ctrl_c():
                code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:  # --help, --version
            code = exc.exit_code
        except click.exceptions.Abort as exc:
            code = _interrupted(exc)
        except click.exceptions.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"Error: {_one_line(exc.format_message())}{hint}", err=True)
            code = exc.exit_code
        except click.ClickException as exc:
            click.echo(f"Error: {_one_line(exc.format_message())}", err=True)
            code = exc.exit_code
        except BrokenPipeError:
            code = 1
        except Exception as exc:  # noqa: BLE001 - this is the boundary
            from replaceme.distributed import world
            from replaceme.errors import explain

            message, code = explain(exc)
            if world().is_root:  # under torchrun every rank gets the same error; rank 0 says it
                if debug:
                    traceback.print_exc()
                click.echo(f"Error: {message}", err=True)
        except KeyboardInterrupt as exc:
            code = _interrupted(exc)
        sys.exit(code if isinstance(code, int) else 0)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _HELP[name]) for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="replaceme")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error (also $REPLACEME_DEBUG=1).")
def cli(verbose: int, debug: bool) -> None:
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


def _more_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    """``replaceme COMMAND -v``: add to the verbosity given before the command."""
    if value:
        from replaceme.console import setup_logging

        group = ctx.find_root().params.get("verbose") or 0
        setup_logging(group + value)


def _first_command(argv: list[str]) -> int:
    """Index of the first word that names a command (options before it are the group's)."""
    for i, word in enumerate(argv):
        if word in COMMANDS:
            return i
    return len(argv)


def _interrupted(exc: BaseException) -> int:
    """Say that the run was interrupted (and by which signal); return the exit status."""
    from replaceme.cli.signals import terminated_by

    signal = terminated_by(exc)
    click.echo(f"Error: interrupted by {signal.name}" if signal else "Error: interrupted", err=True)
    return signal.exit_code if signal else 130


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


logging.getLogger("replaceme").addHandler(logging.NullHandler())
