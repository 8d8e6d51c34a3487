"""`nonsingular train` from the command line: a working run, config layering, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nonsingular.datasets import load_data
from nonsingular.models import build_model
from nonsingular.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from nonsingular.training import RunPaths
from tests.support import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")  # training on one thread (tests/conftest.py)

FAST = ["--widths", "16", "--epochs", "2", "--eval-steps", "2", "--quiet"]


def test_train_writes_checkpoint_logs_and_config(tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "run.safetensors"
    config = tmp_path / "train.toml"
    config.write_text('objective = "pgd-at"\nepochs = 5\nlr = 0.004\nattack_steps = 2\n')
    code, stdout, stderr = run_cli(monkeypatch, capsys, "train", "--out", str(out), "--config", str(config), *FAST)
    assert code == 0, stderr
    assert "test accuracy" in stdout
    ckpt = load_checkpoint(out)
    meta = ckpt.metadata
    assert meta["architecture"]["name"] == "mlp" and meta["architecture"]["widths"] == [16]
    assert meta["data"]["source"] == "digits" and meta["data"]["seed"] == 0
    # `nonsingular evaluate` reloads the test split from these two keys.
    assert meta["data"]["n_test"] == len(load_data(meta["data"]["source"], meta["data"]["seed"]).y_test)
    training = meta["training"]
    assert training["objective"] == "pgd-at" and training["epochs_done"] == 2 and training["complete"]
    assert training["hyperparameters"]["lr"] == 0.004  # from the file
    assert training["hyperparameters"]["epochs"] == 2  # the flag overrides the file
    assert meta["threat"]["kind"] == "input" and "version" in meta
    assert [m["epoch"] for m in meta["metrics"]] == [1, 2]
    assert {"val_clean_acc", "val_robust_acc", "train_loss", "seconds"} <= set(meta["metrics"][0])
    paths = RunPaths(out)
    assert len(paths.jsonl.read_text().splitlines()) == 2
    assert paths.csv.read_text().splitlines()[0].startswith("epoch,")
    saved = yaml.safe_load(paths.config.read_text())
    assert saved["objective"] == "pgd-at" and saved["epochs"] == 2

    # The saved config is a valid --config file that reproduces the run.
    again = tmp_path / "again.safetensors"
    code, _, stderr = run_cli(monkeypatch, capsys, "train", "--out", str(again), "--config", str(paths.config), "-q")
    assert code == 0, stderr
    assert read_metadata(again)["metrics"][-1]["train_loss"] == meta["metrics"][-1]["train_loss"]


def _config(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objective", "fgsm"], "unknown objective 'fgsm'"),
        (["--objective", "joint-at+awp"], "awp cannot be combined with joint-at"),
        (["--eps-x", "-0.1"], "eps_x must be a finite number >= 0"),
        (["--eps-w", "-1"], "eps_w must be a finite number >= 0"),
        (["--lambda-w", "-2"], "lambda_w must be a finite number >= 0"),
        (["--lambda-x", "nan"], "lambda_x must be a finite number >= 0"),
        (["--epochs", "0"], "epochs"),
        (["--widths", "16,x"], "--widths must be comma-separated integers"),
        (["--data", "imagenet"], "unknown data source 'imagenet'"),
        (["--config", "{tmp}/missing.toml"], "cannot read config"),
        (["--config", "{tmp}/bad.toml"], "is not valid TOML"),
        (["--config", "{tmp}/bad.yaml"], "is not valid YAML"),
        (["--config", "{tmp}/unknown.yaml"], "unknown config key 'learning_rate'"),
        (["--config", "{tmp}/list.yaml"], "must hold a table of keys"),
        (["--config", "{tmp}/config.json"], "must be a .toml, .yaml or .yml file"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch, capsys, args: list[str], message: str
) -> None:
    _config(tmp_path, "bad.toml", "epochs = = 3\n")
    _config(tmp_path, "bad.yaml", "epochs: [3\n")
    _config(tmp_path, "unknown.yaml", "learning_rate: 0.1\n")
    _config(tmp_path, "list.yaml", "- 1\n- 2\n")
    _config(tmp_path, "config.json", "{}")
    out = tmp_path / "out.safetensors"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, stderr = run_cli(monkeypatch, capsys, "train", "--out", str(out), *FAST, *args)
    assert code == 2
    assert message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not any(p.exists() for p in RunPaths(out).files())


def test_existing_out_needs_force_and_resume_checks_architecture(tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "run.safetensors"
    assert run_cli(monkeypatch, capsys, "train", "--out", str(out), *FAST)[0] == 0
    files = {p: p.read_bytes() for p in RunPaths(out).files()}

    code, _, stderr = run_cli(monkeypatch, capsys, "train", "--out", str(out), *FAST)
    assert code == 2 and "exists; pass --force" in stderr

    code, _, stderr = run_cli(monkeypatch, capsys, "train", "--out", str(out), "--resume", "--widths", "32")
    assert code == 2 and "another architecture" in stderr and "widths" in stderr
    assert len(stderr.strip().splitlines()) == 1

    code, _, stderr = run_cli(monkeypatch, capsys, "train", "--out", str(out), "--resume", "--data-seed", "1")
    assert code == 2 and "other data" in stderr and "seed" in stderr

    assert {p: p.read_bytes() for p in files} == files

    # Resuming a finished run with more epochs continues it; with none given it has nothing left to do.
    code, _, stderr = run_cli(monkeypatch, capsys, "train", "--out", str(out), "--resume", "--epochs", "3", "-q")
    assert code == 0, stderr
    assert read_metadata(out)["training"]["epochs_done"] == 3


def test_resume_needs_a_training_checkpoint(tmp_path: Path, monkeypatch, capsys) -> None:
    checkpoint = tmp_path / "plain.safetensors"
    spec = {"name": "mlp", "input_shape": [1, 8, 8], "widths": [4], "num_classes": 10}
    save_checkpoint(checkpoint, build_model(spec), {"architecture": spec, "data": {"source": "digits", "seed": 0}})
    code, _, stderr = run_cli(monkeypatch, capsys, "train", "--out", str(checkpoint), "--resume")
    assert code == 2 and "holds no training state" in stderr
    code, _, stderr = run_cli(monkeypatch, capsys, "train", "--out", str(tmp_path / "none.safetensors"), "--resume")
    assert code == 2 and "no checkpoint" in stderr
