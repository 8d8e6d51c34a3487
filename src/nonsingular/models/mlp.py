"""The input normalisation layer and the paper's MLP.

Inputs are in the data's scale ([0, 1] by default); normalisation is the model's first layer, so every
epsilon stays in the data's scale. Architectures by name (for checkpoints): `architectures.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP", "Normalize"]


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
        mean: input normalisation statistics (scalar or per channel).
        std: its standard deviation, in the same form as mean.
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
