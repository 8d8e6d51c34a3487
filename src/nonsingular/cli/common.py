"""Pieces every command shares: threat options, safe output writing, progress bars, one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import torch
import typer
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

from .. import devices
from ..apgd import AttackKind, AutoEnsemble, make_attack
from ..attacks import PGD
from ..checkpoint import atomic_write, check_output_path
from ..errors import InputError, describe
from ..quantize import LayerGrid, QuantizationSpec, Rounding, Scheme
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


# ---------------------------------------------------------------------- threat options
EpsXOpt = Annotated[float, typer.Option("--eps-x", help="Input l_inf radius, in data units (inputs lie in [0, 1]).")]
EpsWOpt = Annotated[
    float,
    typer.Option(
        "--eps-w",
        help="Weight radius. elementwise ball: per element, |D_ij| <= eps_w (absolute, weight units) or "
        "eps_w |W_ij| (relative); operator ball: ||D||_inf <= eps_w (absolute) or eps_w ||W||_inf (relative).",
    ),
]
BallOpt = Annotated[
    WeightBall, typer.Option("--weight-ball", help="elementwise: |D_ij| <= rho_ij; operator: ||D||_inf <= e.")
]
ModeOpt = Annotated[EpsMode, typer.Option("--weight-mode", help="absolute radius, or relative to the weights' size.")]
EpsBOpt = Annotated[float, typer.Option("--eps-b", help="Bias radius (same mode as weights); 0 leaves biases alone.")]
LayersOpt = Annotated[
    str | None,
    typer.Option("--layers", help="Comma-separated module names to perturb (default: every Linear/Conv weight)."),
]


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


QuantizeOpt = Annotated[
    str | None,
    typer.Option(
        "--quantize",
        help="intN (int8, int4, ...): the weight threat becomes the model's own N-bit integer grid, an element-wise "
        "box of radius s/2 (--rounding nearest) or s (any) per weight, s the grid step of its tensor or channel; "
        "replaces --eps-w.",
    ),
]
PerChannelOpt = Annotated[
    bool, typer.Option("--per-channel/--per-tensor", help="With --quantize: one grid scale per output channel.")
]
SymmetricOpt = Annotated[
    bool,
    typer.Option(
        "--symmetric/--asymmetric",
        help="With --quantize: symmetric grid (zero point 0, s = max|W| / (2^(N-1)-1)) or asymmetric "
        "(s = (max W - min W) / (2^N - 1), zero point from the range).",
    ),
]
RoundingOpt = Annotated[
    Rounding,
    typer.Option("--rounding", help="With --quantize: nearest (radius s/2) or any rounding direction (radius s)."),
]


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


def grid_lines(spec: QuantizationSpec, grids: dict[str, LayerGrid]) -> list[str]:
    """What grid was assumed, per layer, so a user can match it to their deployment tool."""
    lines = [f"grid: {spec.describe()} (codes {spec.qmin}..{spec.qmax}); W_q = (q - zero_point) * scale"]
    for name, grid in grids.items():
        d = grid.describe()
        lines.append(
            f"  layer {name}: scale {d['scale_min']:.4g}..{d['scale_max']:.4g} over {d['channels']} scale(s), "
            f"zero point {d['zero_point_range'][0]}..{d['zero_point_range'][1]}"
        )
    return lines


AttackOpt = Annotated[
    AttackKind,
    typer.Option(
        "--attack",
        help="auto: APGD-CE then APGD-T on the examples still standing (the strong default); pgd: fixed-step PGD "
        "(fast).",
    ),
]


def build_attack(kind: AttackKind, **options: Any) -> PGD | AutoEnsemble:
    """apgd.make_attack with a one-line error for options the chosen attack does not take."""
    try:
        return make_attack(kind, **options)
    except ValueError as err:
        raise UserError(f"--attack {kind.value}: {err}") from None


CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        "-c",
        help="Checkpoint (.safetensors) written by nonsingular train, or an ONNX model (.onnx, with --data).",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="Your own model instead of a checkpoint: package.module:factory or file.py:factory."),
]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="safetensors state dict for --model.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="digits, mnist-sample, mnist:PATH, fashion-mnist:PATH, cifar10:PATH or npz:FILE "
        "(default: the checkpoint's own).",
    ),
]
NExamplesOpt = Annotated[int | None, typer.Option("--n-examples", help="Use the first N test examples (default: all).")]
AcceptDataOpt = Annotated[
    bool,
    typer.Option(
        "--accept-data-change/--no-accept-data-change",
        help="Use the checkpoint's data source even when its files no longer hold the data the checkpoint was "
        "trained on (their fingerprint changed).",
    ),
]
JsonOutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Also write the results as JSON to this file.")]
ForceOpt = Annotated[bool, typer.Option("--force/--no-force", help="Overwrite --out if it exists.")]


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
