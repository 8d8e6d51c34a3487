"""The `nonsingular` command: a thin adapter over the library. One module per command."""

from __future__ import annotations

import sys

import typer

from .. import distributed as dist
from .._version import __version__
from ..checkpoint import CheckpointError
from .certify_cmd import certify
from .common import UserError, err_console, one_line
from .evaluate_cmd import evaluate
from .radius_cmd import radius
from .study_cmd import study
from .train_cmd import train

app = typer.Typer(
    name="nonsingular",
    help="Attack, certify and train neural networks against joint input + weight perturbations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"nonsingular {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_show_version),
) -> None:
    """Attack, certify and train neural networks against joint input + weight perturbations."""


app.command("evaluate")(evaluate)
app.command("certify")(certify)
app.command("radius")(radius)
app.command("study")(study)
app.command("train")(train)


def main() -> None:
    """Console-script entry point: bad input gives one line on stderr and exit status 2, never a traceback."""
    try:
        app()
    except SystemExit as done:
        if done.code in (0, None):  # finished: under torchrun every rank leaves the process group together
            dist.shutdown()
        raise
    except (UserError, CheckpointError, ValueError, FileNotFoundError, PermissionError, OSError) as err:
        err_console.print(f"[red]error:[/red] {one_line(err)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except RuntimeError as err:
        if not (dist.is_distributed() and "closed by peer" in str(err)):
            raise
        # A peer process failed (its own error is printed by it): say so in one line instead of gloo's trace.
        err_console.print("[red]error:[/red] another process of this torchrun job stopped; its error is above")
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


__all__ = ["app", "main"]
