"""Defects of the trust issue, one test each: stale cached models, markup eating text, --force then --resume,
leftover temporaries and permissions, relative data paths, Ctrl-C, help that matches the code."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from nonsingular.datasets import load_data
from nonsingular.models.checkpoint import load_checkpoint, read_metadata
from nonsingular.runtime import atomic_write
from nonsingular.study.runner import run_study
from nonsingular.study.schema import StudyConfig
from nonsingular.training import RunPaths, TrainConfig, Trainer, TrainEvent
from tests.support import run_cli
from tests.support.fileformats import write_npz


def _npz(path: Path, seed: int, n: int = 100) -> Path:
    rng = np.random.default_rng(seed)
    return write_npz(path, x=rng.random((n, 1, 8, 8), dtype=np.float32), y=np.arange(n) % 10)


# ------------------------------------------------------------------------------------------------ 1 stale models
def test_study_cache_is_keyed_by_the_data_not_its_path(tmp_path):
    data = _npz(tmp_path / "d.npz", seed=1)
    config = StudyConfig(
        data=f"npz:{data}",
        n_examples=10,
        training={"epochs": 1, "widths": [8]},
        architecture={"name": "mlp", "widths": [8]},
        attack={"steps": 1},
        grid={"eps_x": [0.01], "eps_w": [0.0]},
        headline={"eps_x": 0.01, "eps_w": 0.0},
        certify={"methods": ["ibp"]},
        radius={"enabled": False},
    )
    _, first = run_study(config, tmp_path / "out1", tmp_path / "cache")
    _, again = run_study(config, tmp_path / "out2", tmp_path / "cache")
    assert not first["models"]["standard"]["runs"][0]["cached"] and again["models"]["standard"]["runs"][0]["cached"]
    _npz(data, seed=2)  # the same path, other contents
    _, changed = run_study(config, tmp_path / "out3", tmp_path / "cache")
    assert not changed["models"]["standard"]["runs"][0]["cached"]
    assert changed["data"]["fingerprint"] != first["data"]["fingerprint"]
    report = (tmp_path / "out2" / "report.html").read_text()
    assert "reused from the cache" in report
    assert "trained in this run" in (tmp_path / "out3" / "report.html").read_text()


# ------------------------------------------------------------------------------------------------ 3 markup
def test_help_shows_defaults_and_brackets(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "train", "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert "[default: 20]" in flat and "[default: standard]" in flat and "[default: auto]" in flat
    code, out, _ = run_cli(monkeypatch, capsys, "evaluate", "--help")
    assert "[default 2.5/steps]" in " ".join(out.split())
    code, out, _ = run_cli(monkeypatch, capsys, "study", "--help")
    assert "study.toml" in out


def test_paths_with_brackets_are_printed_literally(monkeypatch, capsys, checkpoint, tmp_path):
    missing = tmp_path / "[old]" / "m.safetensors"
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", "-c", str(missing))
    assert code == 2 and str(missing) in err
    out = tmp_path / "br" / "m[/x].json"
    args = ["radius", "-c", str(checkpoint), "--n-examples", "4", "--iterations", "2", "--steps", "2", "-o", str(out)]
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert out.is_file()
    assert f"wrote {out}" in stdout
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", "-c", str(checkpoint), "--eps-x", "nan")
    assert code == 2 and "nan" in err


# ------------------------------------------------------------------------------------------------ 4 force/resume
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


def test_ctrl_c_says_interrupted(monkeypatch, capsys, tmp_path):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    out = tmp_path / "m.safetensors"
    code, _, err = run_cli(monkeypatch, capsys, "train", "--out", str(out), "--device", "cpu", "-q")
    assert code == 130 and err.strip() == "error: interrupted"


# ------------------------------------------------------------------------------------------------ 9 files
def test_atomic_write_removes_stale_temporaries_and_honours_the_umask(tmp_path):
    target = tmp_path / "r.json"
    dead = tmp_path / ".r.json.999999999.abcd.tmp"  # a writer that was killed (no such pid)
    live = tmp_path / f".r.json.{os.getpid()}.efgh.tmp"  # a writer still running
    other = tmp_path / ".s.json.999999999.abcd.tmp"  # another file's temporary
    for path in (dead, live, other):
        path.write_text("partial")
    old = os.umask(0o027)
    try:
        atomic_write(target, lambda tmp: Path(tmp).write_text("{}"))
    finally:
        os.umask(old)
    assert target.read_text() == "{}"
    assert not dead.exists() and live.exists() and other.exists()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    old = os.umask(0o022)
    try:
        atomic_write(target, lambda tmp: Path(tmp).write_text("{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


# ------------------------------------------------------------------------------------------------ 10 data paths
def test_checkpoints_record_absolute_data_paths_and_refuse_changed_data(monkeypatch, capsys, tmp_path):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    _npz(home / "rel.npz", seed=3, n=50)
    _npz(elsewhere / "rel.npz", seed=4, n=1000)
    monkeypatch.chdir(home)
    out = home / "m.safetensors"
    code, _, err = run_cli(
        monkeypatch, capsys, "train", "--out", str(out), "--data", "npz:rel.npz", "--epochs", "1", "--eval-steps", "0",
        "--widths", "8", "-q", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    meta = read_metadata(out)
    assert meta["data"]["source"] == f"npz:{home / 'rel.npz'}"
    assert meta["data"]["fingerprint"] == load_data(f"npz:{home / 'rel.npz'}").fingerprint
    monkeypatch.chdir(elsewhere)
    result = tmp_path / "e.json"
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", "-c", str(out), "--eps-x", "0.01", "--steps", "1", "-o",
                           str(result))  # fmt: skip
    assert code == 0, err
    assert json.loads(result.read_text())["n_examples"] == 10  # its own 50 examples (10 test), not the 1000 here
    _npz(home / "rel.npz", seed=5, n=50)  # replaced in place
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", "-c", str(out), "--eps-x", "0.01")
    assert code == 2 and "is not the data" in err and "--accept-data-change" in err
    code, _, err = run_cli(
        monkeypatch, capsys, "evaluate", "-c", str(out), "--eps-x", "0.01", "--steps", "1", "--accept-data-change"
    )
    assert code == 0, err
    assert load_checkpoint(out).metadata["data"]["source"].startswith("npz:/")
