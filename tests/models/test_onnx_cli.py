"""`-c model.onnx` works wherever a model is taken (evaluate, certify, radius): the imported network gives the
same certificates as the checkpoint it was exported from, and ONNX-specific mistakes are one-line errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from conftest import run_cli


@pytest.fixture(scope="module")
def onnx_mlp(tmp_path_factory, small_mlp) -> Path:
    """The small digits MLP (Normalize -> Flatten -> Linear/ReLU...) exported to ONNX."""
    path = tmp_path_factory.mktemp("onnx") / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is deprecated
        torch.onnx.export(small_mlp.eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=13)
    return path


def test_certify_an_onnx_model_as_its_checkpoint(monkeypatch, capsys, checkpoint, onnx_mlp, tmp_path) -> None:
    common = ["--eps-x", "0.01", "--eps-w", "0.0005", "--method", "ibp,crown", "--steps", "3", "--n-examples", "20"]
    reports = {}
    for name, source in (("onnx", ["-c", str(onnx_mlp), "--data", "digits"]), ("ckpt", ["-c", str(checkpoint)])):
        out = tmp_path / f"{name}.json"
        code, _, err = run_cli(monkeypatch, capsys, "certify", *source, *common, "--out", str(out))
        assert code == 0, err
        reports[name] = json.loads(out.read_text())
    assert reports["onnx"]["checkpoint"] == str(onnx_mlp)
    for method in ("ibp", "crown"):
        ours, theirs = reports["onnx"]["methods"][method], reports["ckpt"]["methods"][method]
        assert ours["certified_accuracy"] == theirs["certified_accuracy"]
    assert reports["onnx"]["clean_accuracy"] == reports["ckpt"]["clean_accuracy"]


def test_evaluate_and_radius_take_an_onnx_model(monkeypatch, capsys, onnx_mlp, tmp_path) -> None:
    out = tmp_path / "eval.json"
    args = ["-c", str(onnx_mlp), "--data", "digits", "--n-examples", "10", "--steps", "3"]
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", *args, "--eps-x", "0.05", "--out", str(out))
    assert code == 0, err
    assert json.loads(out.read_text())["n_examples"] == 10
    code, stdout, err = run_cli(monkeypatch, capsys, "radius", *args, "--iterations", "3", "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert "certified <= attacked for every example: True" in stdout


def test_a_vector_model_takes_single_channel_images_flattened(monkeypatch, capsys, small_mlp, tmp_path) -> None:
    """A (64, 1)-input network (as VNN-COMP's mnistfc nets take (784, 1)) certifies digits (1, 8, 8) flattened in
    row-major order, exactly as the same network taking images."""
    from nonsingular.onnx_import import load_onnx

    column = tmp_path / "column.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(small_mlp.eval(), (torch.zeros(1, 64, 1),), str(column), dynamo=False, opset_version=13)
    reports = {}
    for name, path in (("column", column), ("image", tmp_path / "image.onnx")):
        if name == "image":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(small_mlp.eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False)
        out = tmp_path / f"{name}.json"
        args = ["certify", "-c", str(path), "--data", "digits", "--eps-x", "0.01", "--method", "crown"]
        code, _, err = run_cli(monkeypatch, capsys, *args, "--steps", "2", "--n-examples", "12", "--out", str(out))
        assert code == 0, err
        reports[name] = json.loads(out.read_text())["methods"]["crown"]["certified_accuracy"]
    assert reports["column"] == reports["image"]
    from nonsingular.cli.loading import load_model_and_data

    loaded = load_model_and_data(column, "digits")
    names = [name for name, _ in loaded.model.named_children()]
    assert names[0] == "input_reshape" and names[1:] == [name for name, _ in load_onnx(column).named_children()]
    assert loaded.metadata["onnx"]["input_reshaped_from"] == [1, 8, 8]


@pytest.mark.parametrize(
    ("data_shape", "model_shape", "flattened"),
    [
        ((1, 28, 28), (784, 1), True),
        ((1, 28, 28), (784,), True),
        ((1, 28, 28), (1, 784), True),
        ((1, 28, 28), (1, 28, 28), False),  # equal: nothing to do
        ((3, 32, 32), (3072,), False),  # channels-first and -last flattenings would both fit
        ((1, 28, 28), (28, 28), False),  # not a vector: a layout the data does not have
        ((1, 28, 28), (783, 1), False),
    ],
)
def test_when_images_are_flattened_for_a_vector_model(data_shape, model_shape, flattened) -> None:
    from nonsingular.cli.loading import _flattened_image

    assert _flattened_image(data_shape, model_shape) is flattened


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ([], "pass --data"),
        (["--data", "mnist-sample"], "takes inputs of shape (1, 8, 8)"),
        (["--data", "digits", "--weights", "w.safetensors"], "--weights goes with --model"),
    ],
)
def test_onnx_model_mistakes_are_one_line(monkeypatch, capsys, onnx_mlp, extra, needle) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "certify", "-c", str(onnx_mlp), *extra)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
