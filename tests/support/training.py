"""A tiny, fast training configuration shared by the training tests (their single-thread torch is the
`one_thread` fixture of tests/conftest.py, used by every test under tests/training)."""

from __future__ import annotations

from typing import Any

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
