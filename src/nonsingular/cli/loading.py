"""Load the model and data a command works on, with one-line errors for everything that can be wrong."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_checkpoint
from ..data import Dataset, load_data
from ..threat import ThreatModel
from .common import UserError


@dataclass
class Loaded:
    model: nn.Module
    data: Dataset
    metadata: dict[str, Any]


@dataclass
class Workload:
    """What an attack or certificate command runs on: model and examples on the device, the threat fitted
    to the data's domain, and where the model came from (for the title and the JSON output)."""

    model: nn.Module
    data: Dataset
    threat: ThreatModel
    x: Tensor
    y: Tensor
    checkpoint: Path | None
    model_spec: str | None

    @property
    def name(self) -> str:
        return self.checkpoint.name if self.checkpoint is not None else str(self.model_spec)

    def source_fields(self) -> dict[str, Any]:
        """The JSON fields naming the model and the data."""
        return {
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
            "model": self.model_spec,
            "data": self.data.describe(),
        }


def load_workload(
    checkpoint: Path | None,
    data: str | None,
    model: str | None,
    weights: Path | None,
    threat: ThreatModel,
    n_examples: int | None,
    device: torch.device,
) -> Workload:
    """Load the model and data, move them to `device`, give the threat the data's domain, check --layers."""
    loaded = load_model_and_data(checkpoint, data, model, weights)
    net = loaded.model.to(device)
    threat = threat.model_copy(update={"domain": loaded.data.domain})
    threat.weight_layers(net)  # fail early on --layers the model does not have
    x, y = select_examples(loaded.data, n_examples)
    return Workload(net, loaded.data, threat, x.to(device), y.to(device), checkpoint, model)


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
