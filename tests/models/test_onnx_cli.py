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
