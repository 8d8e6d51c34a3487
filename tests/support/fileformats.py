"""Writers of tiny files in the formats `nonsingular.datasets` reads: IDX (MNIST), CIFAR-10 batches, .npz.

They follow the published formats byte for byte, so the loaders are tested against what real copies hold,
without committing or downloading any data.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array: big-endian magic (0x0000 08 ndim), big-endian uint32 dims, raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_bytes(path: Path, data: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def random_images(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, *shape) uint8 images and (n,) labels covering all 10 classes (n >= 10)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.uint8)
    return x, y


def write_mnist(
    folder: Path, n_train: int = 20, n_test: int = 10, hw: tuple[int, int] = (28, 28), gz: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """The four MNIST IDX files in `folder` (plain or gzipped); returns the arrays written."""
    x_tr, y_tr = random_images(n_train, hw, seed)
    x_te, y_te = random_images(n_test, hw, seed + 1)
    arrays = {
        "train-images-idx3-ubyte": x_tr,
        "train-labels-idx1-ubyte": y_tr,
        "t10k-images-idx3-ubyte": x_te,
        "t10k-labels-idx1-ubyte": y_te,
    }
    for name, array in arrays.items():
        write_bytes(folder / name, idx_bytes(array), gz=gz)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


class Py2Pickler(pickle._Pickler):  # the pure-Python pickler exposes the per-type dispatch table
    """Pickles as Python 2 did when CIFAR-10 was published: bytes as py2 `str` opcodes, numpy under numpy.core."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes

    def save_global(self, obj: object, name: str | None = None) -> None:
        if getattr(obj, "__name__", "") == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[type] = save_global


def cifar_batch_bytes(x: np.ndarray, y: np.ndarray, py2: bool = True, **extra: object) -> bytes:
    """A CIFAR-10 python batch: {b"batch_label", b"labels", b"data" (n, 3072) uint8, b"filenames"}."""
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(v) for v in y],
        b"data": np.ascontiguousarray(x, dtype=np.uint8).reshape(len(x), -1),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(x))],
        **extra,
    }
    if not py2:
        return pickle.dumps(batch, protocol=2)
    import io

    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(batch)
    return buf.getvalue()


def write_cifar10(folder: Path, n_per_batch: int = 10, n_test: int = 10, py2: bool = True, seed: int = 0) -> dict:
    """data_batch_1..5 and test_batch in `folder`; returns the arrays written as (N, 3, 32, 32) and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = random_images(n_per_batch, (3, 32, 32), seed + i)
        (folder / f"data_batch_{i}").write_bytes(cifar_batch_bytes(x, y, py2=py2))
        xs.append(x)
        ys.append(y)
    x_te, y_te = random_images(n_test, (3, 32, 32), seed)
    (folder / "test_batch").write_bytes(cifar_batch_bytes(x_te, y_te, py2=py2))
    return {"x_train": np.concatenate(xs), "y_train": np.concatenate(ys), "x_test": x_te, "y_test": y_te}


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def random_npz(path: Path, seed: int, n: int = 100) -> Path:
    """An .npz of n random 8x8 one-channel images in [0, 1) with labels cycling through the 10 classes."""
    rng = np.random.default_rng(seed)
    return write_npz(path, x=rng.random((n, 1, 8, 8), dtype=np.float32), y=np.arange(n) % 10)
