"""Model architectures, described by a JSON-able spec so checkpoints rebuild them without running code.

Inputs are in the data's scale ([0, 1] by default); normalisation is the model's first layer, so every
epsilon stays in the data's scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ARCHITECTURES", "MLP", "Normalize", "build_model", "register_architecture"]


class Normalize(nn.Module):
    """(x - mean) / std with scalar or per-channel statistics (channel axis 1)."""

    mean: Tensor  # buffers, (1,) or (channels,)
    std: Tensor

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if (std_t <= 0).any():
            raise ValueError(f"normalisation std must be > 0, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def _shape(self, x: Tensor, t: Tensor) -> Tensor:
        if t.numel() == 1:
            return t.reshape(())
        return t.reshape(1, -1, *([1] * (x.dim() - 2)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self._shape(x, self.mean)) / self._shape(x, self.std)


class MLP(nn.Sequential):
    """The paper's network: Normalize -> Flatten -> (Linear -> ReLU) * len(widths) -> Linear.

    Args:
        input_shape: shape of one example, e.g. (1, 8, 8).
        widths: hidden layer widths, e.g. (256, 256).
        num_classes: number of logits.
        mean, std: input normalisation statistics (scalar or per channel).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        widths: Sequence[int],
        num_classes: int,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
    ) -> None:
        if any(int(w) <= 0 for w in widths) or num_classes < 2:
            raise ValueError(f"MLP widths must be positive and num_classes >= 2, got {list(widths)}, {num_classes}")
        n_in = 1
        for d in input_shape:
            n_in *= int(d)
        layers: list[nn.Module] = [Normalize(mean, std), nn.Flatten()]
        for width in widths:
            layers += [nn.Linear(n_in, int(width)), nn.ReLU()]
            n_in = int(width)
        layers.append(nn.Linear(n_in, num_classes))
        super().__init__(*layers)


def _convnet(name: str) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        from . import convnets, resnet  # imported on use: both build on Normalize from this module

        return {"cnn": convnets.SmallCNN, "lenet": convnets.LeNet, "resnet": resnet.ResNet}[name](**kwargs)

    return build


#: name -> factory(**spec_without_name) -> nn.Module. Extended by `register_architecture`.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": _convnet("cnn"),
    "lenet": _convnet("lenet"),
    "resnet": _convnet("resnet"),
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
