"""Arrays the user saved with numpy: `np.savez(FILE, x=..., y=...)` (optionally x_test, y_test, num_classes)."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from .base import Dataset, check_labels, make_dataset, scale_u8, stratified_split

__all__ = ["load_npz"]


def _npz_inputs(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """Check and scale one input array: uint8 0..255 -> /255, float must already lie in [0, 1]."""
    if x.dtype == np.uint8:
        x = scale_u8(x)
    elif np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise ValueError(f"{path}: '{key}' holds NaN or infinite values")
        lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
        if lo < 0 or hi > 1:
            hint = " (divide by 255, or store uint8)" if hi <= 255 and lo >= 0 else ""
            raise ValueError(f"{path}: '{key}' values lie in [{lo:g}, {hi:g}], expected [0, 1]{hint}")
        x = x.astype(np.float32)
    else:
        raise ValueError(f"{path}: '{key}' has dtype {x.dtype}; store uint8 (0..255) or float in [0, 1]")
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W): one channel
    elif x.ndim not in (2, 4):
        raise ValueError(f"{path}: '{key}' has shape {x.shape}; expected (N, C, H, W), (N, H, W) or (N, D)")
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        raise ValueError(
            f"{path}: '{key}' has shape {x.shape}, which looks channels-last (N, H, W, C); store (N, C, H, W), "
            "e.g. x.transpose(0, 3, 1, 2)"
        )
    return x


def _npz_labels(path: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: '{key}' must be a 1-d integer array, found {y.dtype} of shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"{path}: count mismatch: '{key}' has {len(y)} labels for {n} inputs")
    return y.astype(np.int64)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    # We open the file ourselves so that it is closed on every error path (np.load leaks it on a bad zip).
    with open(path, "rb") as fh:
        try:
            archive = np.load(fh, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError(f"{path}: holds a single array (.npy); save x and y with np.savez(path, x=..., y=...)")
            with archive:
                return {k: archive[k] for k in archive.files}
        except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as err:
            if str(err).startswith(str(path)):
                raise
            raise ValueError(f"{path}: not a readable .npz archive ({type(err).__name__}: {err})") from None


def load_npz(arg: str, seed: int = 0) -> Dataset:
    """A .npz file with arrays x and y, and optionally x_test and y_test (else a seeded stratified 80/20 split).

    x: (N, C, H, W), (N, H, W) (given one channel) or (N, D); uint8 0..255 (scaled to [0, 1]) or float in
    [0, 1]. y: (N,) integers 0..K-1; K is `num_classes` if the file holds that scalar, else max(y) + 1.
    The file is opened with allow_pickle=False, so object arrays are refused rather than unpickled.
    """
    if not arg:
        raise ValueError("npz needs a file: --data npz:FILE")
    path = Path(arg).expanduser()
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    arrays = _read_npz(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise ValueError(f"{path}: no array '{key}'; arrays: {sorted(arrays)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{path}: give both x_test and y_test, or neither; arrays: {sorted(arrays)}")
    x_raw, x = arrays["x"], _npz_inputs(path, "x", arrays["x"])
    if len(x) == 0:
        raise ValueError(f"{path}: 'x' holds no examples")
    y = _npz_labels(path, "y", arrays["y"], len(x))
    if "x_test" in arrays:
        if (x_raw.dtype == np.uint8) != (arrays["x_test"].dtype == np.uint8):
            raise ValueError(
                f"{path}: 'x' is {x_raw.dtype} but 'x_test' is {arrays['x_test'].dtype}; store both in one scale"
            )
        x_te = _npz_inputs(path, "x_test", arrays["x_test"])
        if len(x_te) == 0:
            raise ValueError(f"{path}: 'x_test' holds no examples")
        y_te = _npz_labels(path, "y_test", arrays["y_test"], len(x_te))
        if x_te.shape[1:] != x.shape[1:]:
            raise ValueError(f"{path}: 'x_test' examples have shape {x_te.shape[1:]}, 'x' examples {x.shape[1:]}")
    else:
        x_te = y_te = None
    if "num_classes" in arrays:
        declared = arrays["num_classes"]
        if declared.ndim != 0 or not np.issubdtype(declared.dtype, np.integer):
            raise ValueError(
                f"{path}: 'num_classes' must be an integer scalar, found {declared.dtype} {declared.shape}"
            )
        num_classes = int(declared)
    else:
        num_classes = int(y.max(initial=0)) + 1
    if num_classes < 2:
        raise ValueError(f"{path}: needs at least 2 classes, found num_classes = {num_classes}")
    check_labels(path, y, num_classes, key="y")
    if y_te is not None:
        check_labels(path, y_te, num_classes, key="y_test")
    if x_te is None:
        try:
            x, y, x_te, y_te = stratified_split(x, y, 0.2, seed)
        except ValueError as err:
            raise ValueError(f"{path}: cannot split 'x' 80/20 by class ({err}); give x_test and y_test") from None
    return make_dataset(f"npz:{arg}", x, y, x_te, y_te, num_classes)
