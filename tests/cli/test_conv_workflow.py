"""From the CLI, a CNN trains on MNIST-format files, is attacked in both scopes and certified with IBP."""

import json
from pathlib import Path

from tests.support import run_cli
from tests.support.fileformats import write_mnist


def test_cnn_train_evaluate_certify_on_mnist_files(tmp_path: Path, monkeypatch, capsys) -> None:
    write_mnist(tmp_path / "mnist", n_train=64, n_test=16, gz=True)
    data = f"mnist:{tmp_path / 'mnist'}"
    ckpt = tmp_path / "cnn.safetensors"
    code, _, err = run_cli(
        monkeypatch, capsys, "train", "--data", data, "--architecture", "cnn", "--epochs", "1", "--batch-size", "32",
        "--eval-steps", "1", "--out", str(ckpt), "-q",
    )  # fmt: skip
    assert code == 0, err
    evaluation = tmp_path / "eval.json"
    code, _, err = run_cli(
        monkeypatch, capsys, "evaluate", "-c", str(ckpt), "--eps-x", "0.05", "--eps-w", "0.001", "--steps", "2",
        "--out", str(evaluation),
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(evaluation.read_text())
    assert report["data"]["input_shape"] == [1, 28, 28]
    joint = report["cells"]["joint"]
    assert joint["per-example"]["checked"] and joint["shared"]["checked"]
    assert joint["per-example"]["accuracy"] <= joint["shared"]["accuracy"] + 1 / 16
    paths = joint["per-example"]["paths"]
    assert "explicit" in paths.values() and "lemma1" in paths.values()  # convolutions and Linear layers
    assert set(joint["shared"]["paths"].values()) == {"shared"}
    certificate = tmp_path / "cert.json"
    code, _, err = run_cli(
        monkeypatch, capsys, "certify", "-c", str(ckpt), "--eps-x", "0.005", "--eps-w", "0.0001", "--method", "ibp",
        "--steps", "2", "--out", str(certificate),
    )  # fmt: skip
    assert code == 0, err
    ibp = json.loads(certificate.read_text())["methods"]["ibp"]
    assert ibp["broken"] == 0 and 0.0 <= ibp["certified_accuracy"] <= 1.0
