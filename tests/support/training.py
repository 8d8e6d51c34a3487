"""Helpers shared by the training tests: a tiny, fast configuration and a single-thread torch."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nonsingular.training import TrainConfig


def tiny_config(**overrides: Any) -> TrainConfig:
    """A run of a second or two on the digits: a small MLP on a subset, short attacks, no robust metrics."""
    base: dict[str, Any] = {
        "widths": [32, 32],
        "n_train": 384,
        "epochs": 3,
        "batch_size": 32,
        "lr": 5e-3,
        "attack_steps": 3,
        "eval_steps": 0,
    }
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(autouse=True)
def one_thread():
    """Small matmuls are fastest on one thread, and two threads thrash badly on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
