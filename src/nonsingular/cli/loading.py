"""Load the model and data a command works on, with one-line errors for everything that can be wrong."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_checkpoint
from ..data import Dataset, load_data
from .common import UserError


@dataclass
class Loaded:
    model: nn.Module
    data: Dataset
    metadata: dict[str, Any]


def load_model_and_data(
    checkpoint: Path | None, data: str | None = None, model: str | None = None, weights: Path | None = None
) -> Loaded:
    """The model (eval mode) and data a command works on.

    Either a nonsingular checkpoint (its data is the default), or the user's own model: `model` is
    "package.module:factory" (or "path/to/file.py:factory") with optional safetensors `weights`, and `data`
    (default digits) names the data it takes.
    """
    if (checkpoint is None) == (model is None):
        raise UserError("give either --checkpoint, or --model (with --weights) for a model trained elsewhere")
    if model is not None:
        from ..convnets import load_user_model

        net, metadata, seed = load_user_model(model, weights), {"model": model}, 0
    else:
        if weights is not None:
            raise UserError("--weights goes with --model; a checkpoint holds its own weights")
        ckpt = load_checkpoint(checkpoint)
        net, metadata = ckpt.model, ckpt.metadata
        seed = int(metadata.get("data", {}).get("seed", 0))
    source = data or metadata.get("data", {}).get("source", "digits")
    dataset = load_data(source, seed=seed)
    check_input_shape(net, dataset.x_test[:1], source)
    return Loaded(net, dataset, metadata)


def check_input_shape(model: nn.Module, x: Tensor, source: str) -> None:
    """Fail with one line when the data does not fit the model (e.g. 28x28 data for an 8x8 model)."""
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(
            f"the model does not accept inputs of shape {tuple(x.shape[1:])} from data '{source}' ({first})"
        ) from None


def select_examples(data: Dataset, n_examples: int | None) -> tuple[Tensor, Tensor]:
    """The first n test examples (all when None)."""
    if n_examples is not None and n_examples < 1:
        raise UserError(f"--n-examples must be >= 1, got {n_examples}")
    n = len(data.y_test) if n_examples is None else min(n_examples, len(data.y_test))
    return data.x_test[:n], data.y_test[:n]
