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


def load_model_and_data(checkpoint: Path, data: str | None = None) -> Loaded:
    """The checkpoint's model (eval mode) and its data: `data` if given, else the source it was trained on."""
    ckpt = load_checkpoint(checkpoint)
    data_meta = ckpt.metadata.get("data", {})
    source = data or data_meta.get("source", "digits")
    dataset = load_data(source, seed=int(data_meta.get("seed", 0)))
    check_input_shape(ckpt.model, dataset.x_test[:1], source)
    return Loaded(ckpt.model, dataset, ckpt.metadata)


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
