"""`study --executor`: what cannot run stops in one line before any work (Ray missing, Ray with --workers, an
address for the local executor)."""

from __future__ import annotations

import sys

import pytest

from tests.support import run_cli


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--executor", "ray"], "pip install 'nonsingular[ray]'"),
        (["--executor", "ray", "--workers", "2"], "--workers sets the local executor's processes"),
        (["--ray-address", "auto"], "--ray-address needs --executor ray"),
    ],
)
def test_study_executor_refusals_are_one_line(monkeypatch, capsys, tmp_path, args, expected):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code, _, err = run_cli(monkeypatch, capsys, "study", "--out", str(tmp_path / "out"), *args)
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
