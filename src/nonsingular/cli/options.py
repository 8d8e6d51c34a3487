"""The options several commands share, declared once: name, help and units, as typer `Annotated` types.

A command takes them by module, `eps_x: opt.EpsX = 0.0`, so the signature says which shared option a parameter is
and no command repeats a list of imports; options only one command has stay in that command's module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..attacks import AttackKind
from ..deployment import Rounding as RoundingMode
from ..threat import EpsMode, WeightBall

__all__ = [
    "AcceptDataChange",
    "Attack",
    "Ball",
    "Checkpoint",
    "Data",
    "Device",
    "EpsB",
    "EpsW",
    "EpsX",
    "Force",
    "JsonOut",
    "Layers",
    "Mode",
    "Model",
    "NExamples",
    "PerChannel",
    "Quantize",
    "Rounding",
    "Symmetric",
    "Weights",
]

# ---------------------------------------------------------------------- the threat
EpsX = Annotated[float, typer.Option("--eps-x", help="Input l_inf radius, in data units (inputs lie in [0, 1]).")]
EpsW = Annotated[
    float,
    typer.Option(
        "--eps-w",
        help="Weight radius. elementwise ball: per element, |D_ij| <= eps_w (absolute, weight units) or "
        "eps_w |W_ij| (relative); operator ball: ||D||_inf <= eps_w (absolute) or eps_w ||W||_inf (relative).",
    ),
]
Ball = Annotated[
    WeightBall, typer.Option("--weight-ball", help="elementwise: |D_ij| <= rho_ij; operator: ||D||_inf <= e.")
]
Mode = Annotated[EpsMode, typer.Option("--weight-mode", help="absolute radius, or relative to the weights' size.")]
EpsB = Annotated[float, typer.Option("--eps-b", help="Bias radius (same mode as weights); 0 leaves biases alone.")]
Layers = Annotated[
    str | None,
    typer.Option("--layers", help="Comma-separated module names to perturb (default: every Linear/Conv weight)."),
]

# ---------------------------------------------------------------------- the weight threat as an integer grid
Quantize = Annotated[
    str | None,
    typer.Option(
        "--quantize",
        help="intN (int8, int4, ...): the weight threat becomes the model's own N-bit integer grid, an element-wise "
        "box of radius s/2 (--rounding nearest) or s (any) per weight, s the grid step of its tensor or channel; "
        "replaces --eps-w.",
    ),
]
PerChannel = Annotated[
    bool, typer.Option("--per-channel/--per-tensor", help="With --quantize: one grid scale per output channel.")
]
Symmetric = Annotated[
    bool,
    typer.Option(
        "--symmetric/--asymmetric",
        help="With --quantize: symmetric grid (zero point 0, s = max|W| / (2^(N-1)-1)) or asymmetric "
        "(s = (max W - min W) / (2^N - 1), zero point from the range).",
    ),
]
Rounding = Annotated[
    RoundingMode,
    typer.Option("--rounding", help="With --quantize: nearest (radius s/2) or any rounding direction (radius s)."),
]

# ---------------------------------------------------------------------- the attack
Attack = Annotated[
    AttackKind,
    typer.Option(
        "--attack",
        help="auto: APGD-CE then APGD-T on the examples still standing (the strong default); pgd: fixed-step PGD "
        "(fast).",
    ),
]

# ---------------------------------------------------------------------- the model and its data
Checkpoint = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        "-c",
        help="Checkpoint (.safetensors) written by nonsingular train, or an ONNX model (.onnx, with --data).",
    ),
]
Model = Annotated[
    str | None,
    typer.Option("--model", help="Your own model instead of a checkpoint: package.module:factory or file.py:factory."),
]
Weights = Annotated[Path | None, typer.Option("--weights", help="safetensors state dict for --model.")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")]
Data = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="digits, mnist-sample, mnist:PATH, fashion-mnist:PATH, cifar10:PATH or npz:FILE "
        "(default: the checkpoint's own).",
    ),
]
NExamples = Annotated[int | None, typer.Option("--n-examples", help="Use the first N test examples (default: all).")]
AcceptDataChange = Annotated[
    bool,
    typer.Option(
        "--accept-data-change/--no-accept-data-change",
        help="Use the checkpoint's data source even when its files no longer hold the data the checkpoint was "
        "trained on (their fingerprint changed).",
    ),
]

# ---------------------------------------------------------------------- output
JsonOut = Annotated[Path | None, typer.Option("--out", "-o", help="Also write the results as JSON to this file.")]
Force = Annotated[bool, typer.Option("--force/--no-force", help="Overwrite --out if it exists.")]
