"""Load the model and data a command works on, with one-line errors for everything that can be wrong."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_checkpoint
from ..datasets import Dataset, canonical_source, load_data
from ..errors import NonFiniteError, blame
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
    accept_data_change: bool = False,
) -> Workload:
    """Load the model and data, move them to `device`, give the threat the data's domain, check --layers."""
    select_count(n_examples)
    loaded = load_model_and_data(checkpoint, data, model, weights, accept_data_change)
    net = loaded.model.to(device)
    threat = threat.model_copy(update={"domain": loaded.data.domain})
    threat.check_resolvable(net)  # fail early on --layers the model does not have, or radii past float range
    x, y = select_examples(loaded.data, n_examples)
    return Workload(net, loaded.data, threat, x.to(device), y.to(device), checkpoint, model)


def load_model_and_data(
    checkpoint: Path | None,
    data: str | None = None,
    model: str | None = None,
    weights: Path | None = None,
    accept_data_change: bool = False,
) -> Loaded:
    """The model (eval mode) and data a command works on.

    Either a nonsingular checkpoint (its data is the default, and must still be the data it was trained on
    unless `accept_data_change`), an ONNX file (a checkpoint path ending in .onnx; `data` is then required and
    must have the model's input shape), or the user's own model: `model` is "package.module:factory" (or
    "path/to/file.py:factory") with optional safetensors `weights`, and `data` (default digits) names its data.
    """
    if (checkpoint is None) == (model is None):
        raise UserError("give either --checkpoint, or --model (with --weights) for a model trained elsewhere")
    if checkpoint is not None and checkpoint.suffix.lower() == ".onnx":
        return _load_onnx_and_data(checkpoint, data, weights)
    if model is not None:
        from ..user_models import load_user_model

        net, metadata, seed = load_user_model(model, weights), {"model": model}, 0
    else:
        if weights is not None:
            raise UserError("--weights goes with --model; a checkpoint holds its own weights")
        ckpt = load_checkpoint(checkpoint)
        net, metadata = ckpt.model, ckpt.metadata
        with blame(f"{checkpoint}: metadata entry 'data'"):
            seed = int(metadata.get("data", {}).get("seed", 0))
    own = metadata.get("data", {}).get("source")
    if own is not None and not isinstance(own, str):
        raise UserError(f"{checkpoint}: metadata entry data.source must be a string, got {own!r}")
    source = data or own or "digits"
    dataset = load_data(source, seed=seed)
    if own is not None and canonical_source(source) == canonical_source(own):
        check_same_data(dataset, metadata["data"], checkpoint, accept_data_change)
    check_model_fits(net, dataset, source, metadata.get("architecture"))
    return Loaded(net, dataset, metadata)


def _load_onnx_and_data(path: Path, data: str | None, weights: Path | None) -> Loaded:
    """An ONNX model (imported as plain PyTorch) and the data the user names for it."""
    from ..onnx_import import import_onnx, reshape_input

    if weights is not None:
        raise UserError("--weights goes with --model; an ONNX file holds its own weights")
    if data is None:
        raise UserError(f"{path}: an ONNX model has no data of its own; pass --data (e.g. --data mnist)")
    imported = import_onnx(path)
    dataset = load_data(data)
    info: dict[str, Any] = {"path": str(path), "opset": imported.opset, "input_shape": list(imported.input_shape)}
    if _flattened_image(tuple(dataset.input_shape), imported.input_shape):
        imported = reshape_input(imported, tuple(dataset.input_shape))
        info["input_reshaped_from"] = list(dataset.input_shape)
    architecture = {"name": "onnx", "input_shape": list(imported.input_shape)}
    check_model_fits(imported.model, dataset, data, architecture)
    return Loaded(imported.model, dataset, {"onnx": info, "architecture": architecture})


def _flattened_image(data_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> bool:
    """Whether a model of `model_shape` takes the data's examples flattened: the model's input is one vector
    ((784,), (784, 1), (1, 784)...) of as many entries, and the data has one channel, so row-major order is the
    only order (with several channels, channels-first and channels-last flattenings would both fit)."""
    vector = sum(1 for d in model_shape if d != 1) <= 1
    single_channel = len(data_shape) < 3 or data_shape[0] == 1
    same = math.prod(data_shape) == math.prod(model_shape)
    return data_shape != model_shape and vector and single_channel and same


def check_same_data(dataset: Dataset, recorded: dict[str, Any], checkpoint: Path | None, accept: bool) -> None:
    """The checkpoint's own data source must still hold the data it was trained on (its recorded fingerprint)."""
    fingerprint = recorded.get("fingerprint")
    if fingerprint is None or fingerprint == dataset.fingerprint or accept:
        return
    raise UserError(
        f"the data at {dataset.name} is not the data {checkpoint} was trained on (fingerprint {dataset.fingerprint}, "
        f"recorded {fingerprint}): its files changed; pass --accept-data-change to use it anyway"
    )


def check_model_fits(model: nn.Module, data: Dataset, source: str, architecture: Any = None) -> None:
    """Fail with one line when the data does not fit the model: another input shape than the architecture
    records, a forward pass that fails, logits that are not (N, K) with K >= the data's classes, or non-finite
    logits on clean test examples."""
    shape = list(data.input_shape)
    if isinstance(architecture, dict) and "input_shape" in architecture and list(architecture["input_shape"]) != shape:
        raise UserError(
            f"the model takes inputs of shape {tuple(architecture['input_shape'])} but data '{source}' has "
            f"{tuple(shape)}"
        )
    x = data.x_test[:2]
    try:
        with torch.no_grad(), blame("the model's forward pass"):
            logits = model(x)
    except ValueError as err:
        raise UserError(
            f"the model does not accept inputs of shape {tuple(shape)} from data '{source}' ({err})"
        ) from None
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != len(x):
        got = f"shape {tuple(logits.shape)}" if isinstance(logits, Tensor) else f"a {type(logits).__name__}"
        raise UserError(f"the model must return logits of shape (N, classes) for N inputs; it returned {got}")
    if logits.shape[1] < data.num_classes:
        raise UserError(f"the model gives {logits.shape[1]} outputs but data '{source}' has {data.num_classes} classes")
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError("the model's logits on clean test examples are NaN or infinite")


def select_count(n_examples: int | None) -> None:
    if n_examples is not None and n_examples < 1:
        raise UserError(f"--n-examples must be >= 1, got {n_examples}")


def select_examples(data: Dataset, n_examples: int | None) -> tuple[Tensor, Tensor]:
    """The first n test examples (all when None)."""
    select_count(n_examples)
    n = len(data.y_test) if n_examples is None else min(n_examples, len(data.y_test))
    return data.x_test[:n], data.y_test[:n]
