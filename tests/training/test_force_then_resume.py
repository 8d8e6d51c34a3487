"""`train --force` starts a new run: killed before its first epoch ends, a resume continues the new run (its
settings, its empty metrics), never the old one it replaced."""

from __future__ import annotations

import pytest

from nonsingular.models.checkpoint import read_metadata
from nonsingular.training import RunPaths, TrainConfig, Trainer, TrainEvent
from tests.support import run_cli


class _Stop(Exception):
    pass


def _interrupt_first_batch(event: TrainEvent) -> None:
    if event.kind == "batch":
        raise _Stop


def test_force_then_kill_then_resume_continues_the_new_run(tmp_path):
    paths = RunPaths(tmp_path / "m.safetensors")
    old = TrainConfig(epochs=1, n_train=64, widths=[8], eval_steps=0, device="cpu", lr=0.01)
    Trainer(old, paths).fit()
    new = old.model_copy(update={"lr": 0.002, "epochs": 2})
    with pytest.raises(_Stop):  # `train --force` with new settings, killed during its first epoch
        Trainer(new, paths, callback=_interrupt_first_batch).fit()
    meta = read_metadata(paths.checkpoint)
    assert meta["training"]["hyperparameters"]["lr"] == 0.002 and meta["training"]["epochs_done"] == 0
    assert "lr: 0.002" in paths.config.read_text()
    assert paths.jsonl.read_text() == ""  # the old run's metrics are gone with it
    resumed = Trainer(new, paths)
    resumed.resume()
    assert resumed.epochs_done == 0
    resumed.fit()
    assert read_metadata(paths.checkpoint)["training"]["epochs_done"] == 2


def test_resume_cli_restarts_a_run_with_no_finished_epoch(monkeypatch, capsys, tmp_path):
    out = tmp_path / "m.safetensors"
    Trainer(TrainConfig(epochs=1, n_train=64, widths=[8], eval_steps=0, device="cpu"), RunPaths(out)).fit()
    args = ["train", "--out", str(out), "--resume", "--epochs", "2", "-q", "--device", "cpu"]
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "2 epochs" in stdout
