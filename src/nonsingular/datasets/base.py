"""The in-memory dataset every loader returns, and the helpers loaders share (statistics, split, scaling)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["Dataset", "channel_stats", "check_labels", "make_dataset", "scale_u8", "stratified_split"]


@dataclass(frozen=True)
class Dataset:
    """A train/test split in the data's own scale.

    Attributes:
        name: the source string it was loaded from, e.g. "digits".
        x_train, x_test: (N, *input_shape) float32 in `domain`.
        y_train, y_test: (N,) int64 class labels.
        domain: (lo, hi) of valid inputs.
        mean, std: per-channel statistics of x_train, for the model's normalisation layer.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    domain: tuple[float, float] = (0.0, 1.0)
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the data itself (every array, the classes and the domain), not of where it came from: a file
        replaced in place gives another fingerprint. 20 hex digits of BLAKE2b."""
        digest = hashlib.blake2b(digest_size=10)
        digest.update(repr((self.num_classes, tuple(self.domain))).encode())
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(repr((str(array.dtype), tuple(array.shape))).encode())
            digest.update(array.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "n_train": len(self.y_train),
            "n_test": len(self.y_test),
            "domain": list(self.domain),
            "fingerprint": self.fingerprint,
        }


def channel_stats(x: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over (N, C, ...) data; a single scalar for flat data."""
    if x.dim() <= 2:
        return [x.mean().item()], [max(x.std().item(), 1e-6)]
    dims = [0, *range(2, x.dim())]
    return x.mean(dim=dims).tolist(), x.std(dim=dims).clamp_min(1e-6).tolist()


def stratified_split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def make_dataset(
    name: str, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, num_classes: int
) -> Dataset:
    x_train = torch.as_tensor(np.ascontiguousarray(x_tr), dtype=torch.float32)
    mean, std = channel_stats(x_train)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=torch.as_tensor(y_tr, dtype=torch.int64),
        x_test=torch.as_tensor(np.ascontiguousarray(x_te), dtype=torch.float32),
        y_test=torch.as_tensor(y_te, dtype=torch.int64),
        num_classes=num_classes,
        mean=mean,
        std=std,
    )


def scale_u8(x: np.ndarray) -> np.ndarray:
    """uint8 0..255 to float32 in [0, 1]."""
    return x.astype(np.float32) / 255.0


def check_labels(path: Path, y: np.ndarray, num_classes: int, key: str = "labels") -> None:
    """ValueError naming `path` when labels leave 0..num_classes-1."""
    if len(y) == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{path}: {key} out of range: found {lo}..{hi}, expected 0..{num_classes - 1}")
