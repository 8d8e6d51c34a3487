"""Tiny deterministic models for the tests: a seeded MLP trained for about a second on the digits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nonsingular.datasets import Dataset
from nonsingular.models import MLP


def train_mlp(data: Dataset, widths: tuple[int, ...] = (32, 32), epochs: int = 8, seed: int = 0) -> MLP:
    """A small MLP trained with Adam on the digits; about a second on one core."""
    torch.manual_seed(seed)
    model = MLP(data.input_shape, widths, data.num_classes, data.mean, data.std)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(data.y_train), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
