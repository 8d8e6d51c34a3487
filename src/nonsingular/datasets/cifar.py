"""CIFAR-10 from its python batches, unpickled by an unpickler that only builds dicts, lists and arrays."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from .base import Dataset, check_labels, make_dataset, scale_u8

__all__ = ["load_cifar10"]

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


def _reconstruct_fn() -> Callable[..., Any]:
    # numpy moved numpy.core to numpy._core; take the function from an array's own reduction, not by module name.
    return np.zeros(1).__reduce__()[0]


def _empty_bytes() -> bytes:
    """`bytes()`, as Python 3 pickles b"" at protocol 2; no argument, so no way to allocate a huge buffer."""
    return b""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as Python 3 pickles bytes at protocol 2, restricted to the one codec it uses."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
    return text.encode("latin1")


class _ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a callable outside the allow-list."""


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only builtin containers and numpy arrays.

    Why: a pickle names callables that `pickle.load` calls while reading (os.system is one line away), so a
    tampered CIFAR file would run code. A CIFAR batch holds only a dict of bytes, lists of ints and one uint8
    array, so every global outside this allow-list is refused.
    """

    _ALLOWED: ClassVar[Mapping[tuple[str, str], Callable[[], Any]]] = MappingProxyType(
        {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct_fn,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct_fn,
            ("numpy", "ndarray"): lambda: np.ndarray,
            ("numpy", "dtype"): lambda: np.dtype,
            ("_codecs", "encode"): lambda: _latin1_encode,
            ("__builtin__", "bytes"): lambda: _empty_bytes,
            ("builtins", "bytes"): lambda: _empty_bytes,
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        make = self._ALLOWED.get((module, name))
        if make is None:
            raise _ForbiddenGlobal(f"it refers to {module}.{name}, which a CIFAR batch never contains")
        return make()


def _unpickle_batch(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        # encoding="bytes": the files were written by Python 2, whose str are bytes here (keys b"data", ...).
        obj = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except _ForbiddenGlobal as err:
        raise ValueError(f"{path}: not a CIFAR-10 python batch; refused to unpickle ({err})") from None
    # What a damaged pickle raises depends on where the damage is; all of it means "re-extract the archive".
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        MemoryError,
        OverflowError,
    ) as err:
        raise ValueError(f"{path}: truncated or corrupted pickle ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch: x (n, 3, 32, 32) uint8 (rows are 1024 red, 1024 green, 1024 blue values), y (n,) int64."""
    batch = _unpickle_batch(path)
    if "labels" not in batch:
        hint = " (this looks like CIFAR-100, which is not supported)" if "fine_labels" in batch else ""
        raise ValueError(f"{path}: no 'labels' entry{hint}; keys: {sorted(batch)}")
    if "data" not in batch:
        raise ValueError(f"{path}: no 'data' entry; keys: {sorted(batch)}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape (n, 3072), found {desc}")
    try:
        labels = np.asarray(batch["labels"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: 'labels' is not a list of integers ({err})") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'labels' must be a list of integers, found {labels.dtype} of shape {labels.shape}")
    if len(labels) != len(data):
        raise ValueError(f"{path}: count mismatch: {len(labels)} labels for {len(data)} images")
    check_labels(path, labels, num_classes=10)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(arg: str, seed: int = 0) -> Dataset:
    """CIFAR-10 from its python batches in folder `arg` (or torchvision's `arg`/cifar-10-batches-py).

    Reads data_batch_1..5 (training) and test_batch without running code from the pickles (see
    `_ArrayUnpickler`). Returns x: (N, 3, 32, 32) float32 in [0, 1], y in 0..9; the official split.
    """
    if not arg:
        raise ValueError("cifar10 needs a folder: --data cifar10:PATH")
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise ValueError(f"{root}: cifar10 data folder not found (pass the folder holding data_batch_1..5)")
    folder = root
    if not (root / _CIFAR_TEST).exists() and (root / "cifar-10-batches-py").is_dir():
        folder = root / "cifar-10-batches-py"
    train = [_cifar_batch(folder / name) for name in _CIFAR_TRAIN]
    x_te, y_te = _cifar_batch(folder / _CIFAR_TEST)
    x_tr = np.concatenate([x for x, _ in train])
    y_tr = np.concatenate([y for _, y in train])
    return make_dataset(f"cifar10:{arg}", scale_u8(x_tr), y_tr, scale_u8(x_te), y_te, 10)
