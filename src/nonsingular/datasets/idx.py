"""MNIST and Fashion-MNIST from the IDX files the user has (gzipped or not, torchvision's folders too)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .base import Dataset, check_labels, make_dataset, scale_u8

__all__ = ["load_fashion_mnist", "load_mnist", "read_idx"]

#: IDX magic numbers: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions.
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: Sub-folders torchvision leaves behind under its `root` argument, per scheme.
_TORCHVISION_DIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip (by content, not by name: some mirrors rename files)."""
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{path}: corrupted or truncated gzip file ({err})") from None


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped or not) and check its header against its payload.

    Args:
        path: the file.
        magic: expected magic number, 0x803 for (N, H, W) images, 0x801 for (N,) labels.

    Returns:
        uint8 array of the shape the header declares.

    Raises:
        ValueError: missing file, wrong magic number (e.g. a labels file where images belong), or a payload
            shorter or longer than the header's dimensions say.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kinds = {_IDX_IMAGES_MAGIC: "images (idx3)", _IDX_LABELS_MAGIC: "labels (idx1)"}
        what = kinds.get(found, "not an unsigned-byte IDX file of images or labels")
        raise ValueError(
            f"{path}: wrong magic number 0x{found:08x}, expected 0x{magic:08x} for {kinds[magic]}; the file is {what}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header (needs {header} bytes, has {len(raw)})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header
    if payload != expected:
        what = "truncated payload" if payload < expected else "trailing bytes after the payload"
        raise ValueError(f"{path}: {what}: header declares shape {dims} ({expected} bytes), file holds {payload}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx_folder(root: Path, scheme: str) -> Path:
    """The folder holding the IDX files: root itself, root/raw, or torchvision's root/<MNIST|FashionMNIST>/raw."""
    if not root.is_dir():
        raise ValueError(f"{root}: {scheme} data folder not found (pass the folder holding the IDX files)")
    candidates = [root, root / "raw", root / _TORCHVISION_DIRS[scheme] / "raw"]
    for folder in candidates:
        if any(_idx_file(folder, stem) for stem in _IDX_NAMES.values()):
            return folder
    raise ValueError(
        f"{root}: no {scheme} IDX files (e.g. {_IDX_NAMES['train_images']}[.gz]) in "
        + ", ".join(str(c) for c in candidates)
    )


def _idx_file(folder: Path, stem: str) -> Path | None:
    """The file for `stem`: plain or .gz, and the dotted spelling some copies use (train-images.idx3-ubyte)."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, Path]:
    files = {}
    for kind in ("images", "labels"):
        stem = _IDX_NAMES[f"{split}_{kind}"]
        found = _idx_file(folder, stem)
        if found is None:
            raise ValueError(f"{folder / stem}: file not found (nor {stem}.gz)")
        files[kind] = found
    images = read_idx(files["images"], _IDX_IMAGES_MAGIC)
    labels = read_idx(files["labels"], _IDX_LABELS_MAGIC)
    # The magic numbers fix the ranks: images (N, H, W), labels (N,).
    if len(images) != len(labels):
        raise ValueError(
            f"{files['labels']}: count mismatch: {len(labels)} labels for {len(images)} images in {files['images']}"
        )
    check_labels(files["labels"], labels, num_classes=10)
    return images, labels, files["images"]


def _load_idx(scheme: str, arg: str) -> Dataset:
    if not arg:
        raise ValueError(f"{scheme} needs a folder: --data {scheme}:PATH")
    folder = _find_idx_folder(Path(arg).expanduser(), scheme)
    x_tr, y_tr, f_tr = _idx_split(folder, "train")
    x_te, y_te, f_te = _idx_split(folder, "test")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ValueError(f"{f_te}: images are {x_te.shape[1:]} but the training images in {f_tr} are {x_tr.shape[1:]}")
    return make_dataset(
        f"{scheme}:{arg}",
        scale_u8(x_tr)[:, None],
        y_tr.astype(np.int64),
        scale_u8(x_te)[:, None],
        y_te.astype(np.int64),
        num_classes=10,
    )


def load_mnist(arg: str, seed: int = 0) -> Dataset:
    """MNIST from IDX files in folder `arg` (also `arg`/raw and torchvision's `arg`/MNIST/raw).

    Returns x: (N, 1, H, W) float32 in [0, 1] (28x28 for the real files), y in 0..9; the official split.
    The seed is unused: the split is fixed by the files.
    """
    return _load_idx("mnist", arg)


def load_fashion_mnist(arg: str, seed: int = 0) -> Dataset:
    """Fashion-MNIST from IDX files in folder `arg` (also `arg`/raw and torchvision's `arg`/FashionMNIST/raw).

    Same format and output as `load_mnist`.
    """
    return _load_idx("fashion-mnist", arg)
