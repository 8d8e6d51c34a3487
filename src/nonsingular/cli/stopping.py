"""What a command says when SIGINT or SIGTERM stops it: what was kept, and the command that resumes it.

Each long-running command is registered through `graceful(command, fn)`, which runs it under
`runtime.signals.stop_on_signals` and, when it stops, fills the note that `main` prints in one line before
exiting with 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..models.checkpoint import read_metadata
from ..runtime.signals import Stopped, stop_on_signals
from ..verification.campaign import read_results

__all__ = ["graceful", "resume_command"]


def resume_command(add: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> str:
    """This process's command line as a `nonsingular` command, with flags in `drop` removed and `add` appended
    where missing."""
    args = [a for a in sys.argv[1:] if a not in drop]
    args += [a for a in add if a not in args]
    return shlex.join(["nonsingular", *args])


def _train_kept(options: dict[str, Any]) -> str:
    path = Path(options["out"])
    if not path.exists():
        return "nothing (no epoch had finished)"
    try:
        done = read_metadata(path).get("training", {}).get("epochs_done")
    except (OSError, ValueError):  # an unreadable checkpoint says nothing more than its name
        done = None
    return f"{path} ({done} finished epoch(s))" if done is not None else str(path)


def _study_kept(options: dict[str, Any]) -> str:
    state = Path(options["out"]) / "state.json"
    try:
        pieces = len(json.loads(state.read_text()).get("values", {}))
    except (OSError, ValueError, AttributeError):
        pieces = 0
    return f"{pieces} finished piece(s) in {state} and the trained models in {options['cache']}"


def _verify_kept(options: dict[str, Any]) -> str:
    out = options.get("out")
    if options.get("instances") is None:
        unchanged = f"; {out} is unchanged" if out is not None else ""
        return f"nothing (one instance writes its answer only when it finishes{unchanged})"
    if out is None:
        return "nothing"
    try:
        rows = len(read_results(Path(out)))
    except (OSError, ValueError):  # not a results CSV: the campaign refused it before running anything
        rows = 0
    return f"{rows} finished row(s) in {out} (the running instance has none; finished rows are skipped)"


_NOTHING = "nothing changed (results are written only when the command finishes)"
#: command -> (what was kept, given the command's options; the resume command)
_PLANS: dict[str, tuple[Callable[[dict[str, Any]], str], Callable[[], str]]] = {
    "train": (_train_kept, lambda: resume_command(add=("--resume",), drop=("--force", "--no-resume"))),
    "study": (_study_kept, lambda: resume_command(drop=("--fresh",))),
    "evaluate": (lambda _: _NOTHING, resume_command),
    "certify": (lambda _: _NOTHING, resume_command),
    "radius": (lambda _: _NOTHING, resume_command),
    "verify": (_verify_kept, resume_command),
}
#: Commands that keep finished units wait this long for the next one; the others stop at once.
#: verify's waits (its instance workers) look at the request every 0.1 s, and its rows are written between them.
_GRACE_S = {"train": 3.0, "study": 3.0, "verify": 2.0}


def graceful(command: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (a typer command) run under stop_on_signals; a stop's note names what was kept and how to resume."""
    kept, resume = _PLANS[command]

    @functools.wraps(fn)
    def run(*args: Any, **options: Any) -> Any:
        with stop_on_signals(grace_s=_GRACE_S.get(command, 0.0)):
            try:
                return fn(*args, **options)
            except Stopped as stop:
                stop.note = f"stopped by {stop.name}: kept {kept(options)}; resume with: {resume()}"
                raise

    return run
