"""Pieces every command shares: the objects its options build (threat, grid, attack, device), safe output
writing, progress bars, one-line errors. The options themselves are declared in `options`."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ..attacks import PGD, AttackKind, AutoEnsemble, make_attack
from ..deployment import QuantizationSpec, Rounding, Scheme
from ..errors import InputError, describe
from ..models.checkpoint import atomic_write, check_output_path
from ..runtime import devices
from ..threat import EpsMode, Scope, ThreatModel, WeightBall

# No markup and no highlighting: user data and paths (which may hold "[...]") are printed literally.
# Colour, where wanted, is given as rich Text styles, never as markup in a string.
console = Console(markup=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)

#: Bad input from the user: printed as one line, exit status 2.
UserError = InputError
T = TypeVar("T")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` as one line on stderr and exit with `code`."""
    err_console.print(Text("error: ", style="red") + Text(" ".join(message.split())))
    sys.exit(code)


# ---------------------------------------------------------------------- what the options build
def layer_names(layers: str | None) -> list[str] | None:
    """--layers "a, b" -> ["a", "b"]; None (all weight layers) when not given."""
    return [n.strip() for n in layers.split(",") if n.strip()] if layers else None


def validated(kind: Callable[..., T], **options: Any) -> T:
    """Build a validated settings object from CLI options; a bad value is one line naming its --option."""
    try:
        return kind(**options)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()))
        message = describe(err).removeprefix(f"{field}: ")
        raise UserError(f"--{field.replace('_', '-')}: {message}" if field else message) from None


def make_threat(
    eps_x: float,
    eps_w: float,
    weight_ball: WeightBall = WeightBall.ELEMENTWISE,
    weight_mode: EpsMode = EpsMode.ABSOLUTE,
    eps_b: float = 0.0,
    layers: str | None = None,
    scope: Scope = Scope.PER_EXAMPLE,
    domain: tuple[float, float] = (0.0, 1.0),
) -> ThreatModel:
    return validated(
        ThreatModel,
        eps_x=eps_x,
        eps_w=eps_w,
        weight_ball=weight_ball,
        weight_mode=weight_mode,
        eps_b=eps_b,
        layers=layer_names(layers),
        scope=scope,
        domain=domain,
    )


def quantization_spec(
    quantize: str | None, per_channel: bool, symmetric: bool, rounding: Rounding, eps_w: float, ball: WeightBall
) -> QuantizationSpec | None:
    """The grid of --quantize, refusing weight options it replaces; None without --quantize."""
    if quantize is None:
        return None
    if eps_w != 0:
        raise UserError("--quantize sets the weight radii from the grid; leave out --eps-w")
    if ball is not WeightBall.ELEMENTWISE:
        raise UserError("--quantize is an element-wise box (every rounding of every weight); leave out --weight-ball")
    scheme = Scheme.SYMMETRIC if symmetric else Scheme.ASYMMETRIC
    return QuantizationSpec.parse(quantize, per_channel=per_channel, scheme=scheme, rounding=rounding)


def build_attack(kind: AttackKind, **options: Any) -> PGD | AutoEnsemble:
    """apgd.make_attack with a one-line error for options the chosen attack does not take."""
    try:
        return make_attack(kind, **options)
    except ValueError as err:
        raise UserError(f"--attack {kind.value}: {err}") from None


def resolve_device(name: str) -> torch.device:
    """--device value to a torch.device (see devices.resolve_device), with a one-line error."""
    try:
        return devices.resolve_device(name)
    except ValueError as err:
        raise UserError(f"--{err}") from None


# ---------------------------------------------------------------------- output
def check_writable(path: Path | None, force: bool) -> None:
    """Before any work: refuse to overwrite an existing file unless --force, and make sure `path` can be written
    (its folder exists or can be made, and takes a file), so that no result is computed only to be lost."""
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"--out {path} is a directory, not a file")
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to overwrite it")
    check_output_path(path)


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def progress_lines(t0: float, every: float = 30.0) -> Callable[[str, int, int], None]:
    """A progress callback writing plain lines "[elapsed] stage done/total" to stderr, for a study's or a
    campaign's progress in a log file or a pipe: one when a stage starts or finishes, one per finished grid
    point, and at most one per `every` seconds within a stage. Stages are told apart by label, so workers whose
    ticks interleave do not print every tick (the units line's label changes with its counts: every change is
    printed)."""
    last: dict[str, float] = {}

    def update(label: str, done: int, total: int) -> None:
        now = time.perf_counter()
        step = label.endswith(("attacks", "certificates"))  # one tick per grid point
        if label not in last or done >= total or step or now - last[label] >= every:
            print(f"[{now - t0:7.1f} s] {label} {done}/{total}", file=sys.stderr, flush=True)
            last[label] = now

    return update


@contextmanager
def progress_bar(description: str, total: int | None = None, enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar on stderr; yields update(done, total, description) for library progress callbacks.

    Disabled (a no-op updater) on non-zero ranks and when `enabled` is False.
    """
    if not enabled:
        yield lambda *_args, **_kwargs: None
        return
    columns = (
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def update(done: int, total_now: int | None = None, description_now: str | None = None) -> None:
            bar.update(task, completed=done, total=total_now, description=description_now or description)

        yield update
