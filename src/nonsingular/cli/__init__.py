"""The `nonsingular` command: a thin adapter over the library, one module per command.

The top layer: it may import every package, and no package imports it. Each command parses options, calls one
library function and prints its report; bad input becomes a one-line error and a non-zero exit.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer
from typer.exceptions import TyperException

from .._version import __version__
from ..errors import describe
from ..runtime import distributed as dist
from ..runtime.memory import is_out_of_memory
from ..runtime.signals import Stopped
from .certify_cmd import certify
from .common import fail
from .evaluate_cmd import evaluate
from .radius_cmd import radius
from .stopping import graceful
from .study_cmd import study
from .train_cmd import train
from .verify_cmd import verify

app = typer.Typer(
    name="nonsingular",
    help="Attack, certify and train neural networks against joint input + weight perturbations.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    # Plain help text: rich markup would eat "[default: ...]" and any bracketed path in a help string.
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"nonsingular {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_show_version),
    debug: bool = typer.Option(
        False, "--debug", help="Show the full traceback of any error (give it before the command)."
    ),
) -> None:
    """Attack, certify and train neural networks against joint input + weight perturbations."""


# SIGINT/SIGTERM stop these with a note of what was kept and the command that resumes (cli/stopping.py)
app.command("evaluate")(graceful("evaluate", evaluate))
app.command("certify")(graceful("certify", certify))
app.command("radius")(graceful("radius", radius))
app.command("study")(graceful("study", study))
app.command("train")(graceful("train", train))
app.command("verify")(graceful("verify", verify))

#: Bad input: every ValueError (pydantic's ValidationError, InputError, CheckpointError, ...) and OSError.
USER_ERRORS = (ValueError, OSError)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point.

    Bad input (a usage error, a ValueError or OSError from the library) gives one line on stderr and exit
    status 2, never a traceback. Any other exception is a bug: one line and exit status 1, or the full
    traceback with `nonsingular --debug COMMAND ...`.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        code = app(args=args, prog_name="nonsingular", standalone_mode=False)
    except TyperException as err:  # click's usage errors: one line instead of the usage block
        message = err.format_message().replace("Value error, ", "")  # typer's enum check goes through pydantic
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `nonsingular`: the message is the help text
            print(message, file=sys.stderr)
            sys.exit(2)
        command = next((a for a in args if a in {c.name for c in app.registered_commands}), None)
        hint = f" (see nonsingular {command} --help)" if command else " (see nonsingular --help)"
        fail(message + hint, err.exit_code)
    except Stopped as stop:  # a graceful stop on SIGINT/SIGTERM: what was kept and how to resume
        print(str(stop), file=sys.stderr, flush=True)  # not an error: one line, the exit status says which signal
        sys.exit(stop.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        fail("interrupted", 130)
    except USER_ERRORS as err:
        if debug:
            raise
        fail(describe(err), 2)
    except (RuntimeError, MemoryError) as err:
        if debug:
            raise
        if is_out_of_memory(err):  # an allocation failed: not a bug, and one line is enough
            fail("out of memory; use fewer examples per batch, a smaller --bound-memory-mb, or more memory", 2)
        if dist.is_distributed() and "closed by peer" in str(err):
            # A peer process failed (its own error is printed by it): say so in one line instead of gloo's trace.
            fail("another process of this torchrun job stopped; its error is above", 1)
        fail(_internal(err), 1)
    except Exception as err:
        if debug:
            raise
        fail(_internal(err), 1)
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130
        fail("interrupted", 130)
    if code not in (0, None):
        sys.exit(code)
    dist.shutdown()  # under torchrun every rank leaves the process group together


def _internal(err: BaseException) -> str:
    return (
        f"internal error ({type(err).__name__}: {describe(err)}); this is a bug in nonsingular or in the model: "
        "rerun as `nonsingular --debug ...` for the traceback"
    )


__all__ = ["app", "main"]
