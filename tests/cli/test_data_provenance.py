"""A checkpoint records its data by absolute path and fingerprint: a command run from another folder reads
the same data, and data changed in place is refused until the user accepts the change."""

from __future__ import annotations

import json

from nonsingular.datasets import load_data
from nonsingular.models.checkpoint import load_checkpoint, read_metadata
from tests.support import run_cli
from tests.support.fileformats import random_npz


def test_checkpoints_record_absolute_data_paths_and_refuse_changed_data(monkeypatch, capsys, tmp_path):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    random_npz(home / "rel.npz", seed=3, n=50)
    random_npz(elsewhere / "rel.npz", seed=4, n=1000)
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
    random_npz(home / "rel.npz", seed=5, n=50)  # replaced in place
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", "-c", str(out), "--eps-x", "0.01")
    assert code == 2 and "is not the data" in err and "--accept-data-change" in err
    code, _, err = run_cli(
        monkeypatch, capsys, "evaluate", "-c", str(out), "--eps-x", "0.01", "--steps", "1", "--accept-data-change"
    )
    assert code == 0, err
    assert load_checkpoint(out).metadata["data"]["source"].startswith("npz:/")
