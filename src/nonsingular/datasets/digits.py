"""scikit-learn's bundled 8x8 digits: the embedded default, nothing to download."""

from __future__ import annotations

import numpy as np

from .base import Dataset, make_dataset, stratified_split

__all__ = ["load_digits"]


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
