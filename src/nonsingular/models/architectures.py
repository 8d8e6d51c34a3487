"""Architectures by name: a JSON-able spec rebuilds a model (checkpoints store the spec, never code).

build_model({"name": "mlp", "input_shape": [1, 8, 8], "widths": [256, 256], "num_classes": 10})
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .convnets import LeNet, SmallCNN
from .mlp import MLP
from .resnet import ResNet

__all__ = ["ARCHITECTURES", "build_model", "register_architecture"]


#: name -> factory(**spec_without_name) -> nn.Module. Extended by `register_architecture`.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "lenet": LeNet,
    "resnet": ResNet,
}


def register_architecture(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make `build_model({"name": name, ...})` call `factory(**rest)`."""
    ARCHITECTURES[name] = factory


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a model from its spec, e.g. {"name": "mlp", "input_shape": [1, 8, 8], "widths": [256, 256], ...}.

    Raises:
        ValueError: unknown architecture or arguments it does not take.
    """
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[name](**spec)
    except TypeError as err:
        raise ValueError(f"architecture {name!r} cannot be built from {spec}: {err}") from None
