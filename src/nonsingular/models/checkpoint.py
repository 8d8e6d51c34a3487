"""Checkpoints: one safetensors file whose header holds a JSON description of the model and its data.

Loading never runs code from the file (safetensors stores tensors and strings only). Writes are atomic:
a temporary file in the same folder, then a rename, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .._version import __version__
from ..errors import describe
from ..runtime import atomic_write, check_output_path
from .architectures import build_model

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "atomic_write",
    "check_finite_tensors",
    "check_output_path",
    "load_checkpoint",
    "save_checkpoint",
]

_META_KEY = "nonsingular"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or describes something we cannot build."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode) and its metadata.

    metadata keys: "architecture" (the spec `build_model` takes), "data" (source and split), "version",
    and whatever the writer added ("training", "metrics", ...).
    """

    model: nn.Module
    metadata: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def save_checkpoint(
    path: str | Path, model: nn.Module, metadata: dict[str, Any], extra: dict[str, torch.Tensor] | None = None
) -> None:
    """Write model.state_dict() (plus `extra` tensors under "extra/<name>") and metadata atomically.

    Args:
        path: target .safetensors file.
        model: its state dict is saved (tensors made contiguous, on CPU).
        metadata: JSON-serialisable; must contain "architecture".
        extra: more tensors to keep (e.g. optimiser state for resuming).
    """
    if "architecture" not in metadata:
        raise ValueError("checkpoint metadata needs an 'architecture' entry")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for k, v in (extra or {}).items():
        tensors[f"extra/{k}"] = v.detach().cpu().contiguous()
    header = {_META_KEY: json.dumps({**metadata, "version": __version__})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading its tensors."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a .safetensors file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({err})") from None
    if _META_KEY not in header:
        raise CheckpointError(f"{path} has no nonsingular metadata; was it written by `nonsingular train`?")
    try:
        metadata = json.loads(header[_META_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} has corrupted metadata ({err})") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: its metadata is a JSON {type(metadata).__name__}, not an object")
    for key in ("architecture", "data", "training"):
        if key in metadata and not isinstance(metadata[key], dict):
            raise CheckpointError(f"{path}: metadata entry {key!r} must be an object")
    return metadata


def check_finite_tensors(tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """CheckpointError naming the first floating-point tensor that holds NaN or infinity."""
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = value[~torch.isfinite(value)].flatten()[0].item()
            kind = "NaN" if math.isnan(bad) else "infinite"
            raise CheckpointError(f"{source}: tensor {name!r} holds {kind} values; refusing to load it")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild the model from a checkpoint written by `save_checkpoint`; the model is in eval mode.

    Raises:
        CheckpointError: missing or corrupted file, unknown architecture, or weights that do not fit it.
    """
    metadata = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({err})") from None
    try:
        model = build_model(metadata["architecture"])
    except Exception as err:  # a hand-edited header can hold anything; name the file, not our internals
        raise CheckpointError(f"{path}: cannot rebuild its architecture ({describe(err)})") from None
    state = {k: v for k, v in tensors.items() if not k.startswith("extra/")}
    check_finite_tensors(state, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not fit the architecture ({' '.join(first[:2])})") from None
    model.eval()
    extra = {k.removeprefix("extra/"): v for k, v in tensors.items() if k.startswith("extra/")}
    return Checkpoint(model=model, metadata=metadata, tensors=extra)
