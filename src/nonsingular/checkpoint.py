"""Checkpoints: one safetensors file whose header holds a JSON description of the model and its data.

Loading never runs code from the file (safetensors stores tensors and strings only). Writes are atomic:
a temporary file in the same folder, then a rename, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ._version import __version__
from .models import build_model

__all__ = ["Checkpoint", "CheckpointError", "atomic_write", "load_checkpoint", "save_checkpoint"]

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


def atomic_write(path: str | Path, write: Any) -> None:
    """Call write(tmp_path), then rename tmp_path onto `path` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        return json.loads(header[_META_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} has corrupted metadata ({err})") from None


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
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot rebuild its architecture ({err})") from None
    state = {k: v for k, v in tensors.items() if not k.startswith("extra/")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not fit the architecture ({' '.join(first[:2])})") from None
    model.eval()
    extra = {k.removeprefix("extra/"): v for k, v in tensors.items() if k.startswith("extra/")}
    return Checkpoint(model=model, metadata=metadata, tensors=extra)
