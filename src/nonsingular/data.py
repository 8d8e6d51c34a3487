"""Datasets as in-memory tensors in the data's scale. The embedded default is scikit-learn's digits.

Nothing here downloads anything: the digits ship inside scikit-learn; other sources read local files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATA_SOURCES", "Dataset", "canonical_source", "load_data", "load_digits", "register_data_source"]


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


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1], shape (N, 1, 8, 8), fixed stratified split.

    With the defaults: 1437 training and 360 test examples.
    """
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_tr, y_tr, x_te, y_te = stratified_split(x, y, test_fraction, seed)
    return make_dataset("digits", x_tr, y_tr, x_te, y_te, num_classes=10)


def _from_files(scheme: str) -> Callable[[str, int], Dataset]:
    def load(arg: str, seed: int) -> Dataset:
        from .datasets import FILE_SOURCES  # imported on use: datasets builds on this module

        if not arg:
            raise ValueError(f"data source '{scheme}' needs a path, e.g. '{scheme}:/data/{scheme}'")
        return FILE_SOURCES[scheme](arg, seed)

    return load


def _mnist_sample(_arg: str, seed: int) -> Dataset:
    from .datasets import load_mnist_sample  # imported on use: datasets builds on this module

    return load_mnist_sample(seed=seed)


#: scheme -> loader(argument, seed). "digits" and "mnist-sample" take no argument; "mnist:PATH" passes PATH.
#: Local files only.
DATA_SOURCES: dict[str, Callable[[str, int], Dataset]] = {
    "digits": lambda _arg, seed: load_digits(seed=seed),
    "mnist-sample": _mnist_sample,
    **{scheme: _from_files(scheme) for scheme in ("mnist", "fashion-mnist", "cifar10", "npz")},
}


def register_data_source(scheme: str, loader: Callable[[str, int], Dataset]) -> None:
    """Make `load_data` (and every `--data`, config and study) accept "scheme" or "scheme:ARG".

    Args:
        scheme: the name before the colon; must not contain ":".
        loader: loader(arg, seed) -> Dataset with inputs in [0, 1]; raise ValueError naming the file and the
            problem for anything wrong with what it reads (the CLI prints that as one line).
    """
    if not scheme or ":" in scheme:
        raise ValueError(f"a data source scheme must be a non-empty name without ':', got {scheme!r}")
    DATA_SOURCES[scheme] = loader


def canonical_source(source: str) -> str:
    """`source` with its path made absolute ("npz:rel.npz" -> "npz:/cwd/rel.npz"), so a checkpoint or cache key
    that records it names the same files from any working folder. Sources without a path are returned as given."""
    scheme, sep, arg = source.partition(":")
    if not sep or not arg or scheme not in DATA_SOURCES or scheme in ("digits", "mnist-sample"):
        return source
    return f"{scheme}:{Path(arg).expanduser().resolve()}"


def load_data(source: str = "digits", seed: int = 0) -> Dataset:
    """Load a dataset from a source string such as "digits" or "mnist:/data/mnist".

    Raises:
        ValueError: unknown scheme, or the loader found the files wrong (the message names the file).
    """
    scheme, _, arg = source.partition(":")
    if scheme not in DATA_SOURCES:
        raise ValueError(f"unknown data source {scheme!r}; known: {sorted(DATA_SOURCES)}")
    return DATA_SOURCES[scheme](arg, seed)
