"""Checkpoints: resumed runs end with the same weights as uninterrupted ones; a killed run leaves a loadable file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nonsingular.models import load_checkpoint
from nonsingular.training import RunPaths, Trainer, TrainEvent, resolve_config
from tests.support.training import tiny_config


class Crash(Exception):
    """Stands in for a crash in the middle of an epoch."""


def _crash_at(epoch: int, step: int):
    def callback(event: TrainEvent) -> None:
        if event.kind == "batch" and (event.epoch, event.step) == (epoch, step):
            raise Crash

    return callback


@pytest.mark.parametrize(
    "options",
    [
        {"objective": "joint-at", "eval_steps": 2},
        {"objective": "trades+awp", "optimizer": "sgd", "lr_schedule": "cosine", "warmup_epochs": 2},
    ],
    ids=["joint-at-adam", "trades-awp-sgd-cosine-warmup"],
)
def test_resume_gives_identical_weights(tmp_path: Path, digits, options: dict) -> None:
    config = tiny_config(epochs=3, **options)
    straight = Trainer(config, RunPaths(tmp_path / "straight.safetensors"), data=digits).fit()

    paths = RunPaths(tmp_path / "resumed.safetensors")
    with pytest.raises(Crash):
        Trainer(config, paths, data=digits, callback=_crash_at(epoch=2, step=3)).fit()
    saved = load_checkpoint(paths.checkpoint)
    assert saved.metadata["training"]["epochs_done"] == 1
    assert not saved.metadata["training"]["complete"]

    trainer = Trainer(config, paths, data=digits)
    trainer.resume()
    resumed = trainer.fit()

    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resuming"
    drop = ("seconds", "eval_seconds")
    assert [{k: v for k, v in m.items() if k not in drop} for m in straight.metrics] == [
        {k: v for k, v in m.items() if k not in drop} for m in resumed.metrics
    ]
    assert len(paths.jsonl.read_text().splitlines()) == 3
    assert load_checkpoint(paths.checkpoint).metadata["training"]["complete"]


def test_resume_refuses_another_architecture(tmp_path: Path, digits) -> None:
    paths = RunPaths(tmp_path / "run.safetensors")
    Trainer(tiny_config(epochs=1), paths, data=digits).fit()
    before = paths.checkpoint.read_bytes()
    with pytest.raises(ValueError, match=r"another architecture.*widths"):
        Trainer(tiny_config(epochs=2, widths=[16]), paths, data=digits).resume()
    assert paths.checkpoint.read_bytes() == before


def test_sigkill_mid_epoch_leaves_a_loadable_checkpoint(tmp_path: Path, digits) -> None:
    out = tmp_path / "killed.safetensors"
    args = [
        sys.executable, "-m", "nonsingular", "train", "--out", str(out), "--objective", "joint-at",
        "--widths", "64,64", "--epochs", "200", "--eval-steps", "0", "--attack-steps", "5", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # The run writes an epoch-0 checkpoint at once; wait for the first finished epoch (its metrics line).
        metrics = RunPaths(out).jsonl
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not (metrics.exists() and metrics.read_text()):
            time.sleep(0.05)
        assert metrics.exists() and metrics.read_text(), (
            f"no epoch finished: {proc.stderr.read().decode() if proc.poll() is not None else ''}"
        )
        time.sleep(0.3)  # an epoch here takes about a second: the kill lands inside one
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    ckpt = load_checkpoint(out)
    done = ckpt.metadata["training"]["epochs_done"]
    assert 1 <= done < 200
    assert len(ckpt.metadata["metrics"]) == done
    assert ckpt.tensors, "the optimiser state needed to resume is missing"

    # And the run continues from there (in-process, with one more epoch, to keep the test short).
    config = resolve_config(ckpt.metadata["training"]["hyperparameters"], {"epochs": done + 1})
    trainer = Trainer(config, RunPaths(out), data=digits)
    trainer.resume()
    trainer.fit()
    assert load_checkpoint(out).metadata["training"]["epochs_done"] == done + 1


def test_tensorboard_is_optional(tmp_path: Path, digits, caplog) -> None:
    import importlib.util

    paths = RunPaths(tmp_path / "tb.safetensors")
    with caplog.at_level("WARNING", logger="nonsingular.training.logs"):
        Trainer(tiny_config(epochs=1, tensorboard=True), paths, data=digits).fit()
    if importlib.util.find_spec("tensorboard") is None:
        assert "TensorBoard is not installed" in caplog.text
    else:
        assert any(paths.tensorboard.iterdir())
    assert paths.checkpoint.exists()


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, digits) -> None:
    paths = RunPaths(tmp_path / "diverged.safetensors")
    config = tiny_config(epochs=3, optimizer="sgd", lr=1e30)
    with pytest.raises(FloatingPointError, match="loss became"):
        Trainer(config, paths, data=digits).fit()
    if paths.checkpoint.exists():
        ckpt = load_checkpoint(paths.checkpoint)
        assert all(torch.isfinite(t).all() for t in ckpt.model.state_dict().values())
