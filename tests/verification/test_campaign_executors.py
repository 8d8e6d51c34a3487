"""Where a campaign's instances run changes nothing but the time: `--workers 2` gives the rows of the default
(one after another), the summary keeps the CSV's order, and the executor options are one-line errors where they
cannot apply (Ray not installed, --workers with Ray, executor options for one instance)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nonsingular.verification import read_results
from tests.support import run_cli
from tests.support.verification import campaign_bench


def _rows(path: Path) -> list[tuple[str, str, str]]:
    return [(r.onnx, r.vnnlib, r.result) for r in read_results(path)]


def test_two_local_workers_give_the_rows_of_one(tmp_path: Path, monkeypatch, capsys) -> None:
    folder = campaign_bench(tmp_path)
    csv = str(folder / "instances.csv")
    code, one_out, err = run_cli(monkeypatch, capsys, "verify", "--instances", csv, "--out", str(folder / "one.csv"))
    assert code == 0, err
    one = _rows(folder / "one.csv")
    assert [r[2] for r in one] == ["unsat", "sat", "unsat", "sat"]  # one after another: the CSV's order
    code, two_out, err = run_cli(
        monkeypatch, capsys, "verify", "--instances", csv, "--out", str(folder / "two.csv"), "--workers", "2"
    )
    assert code == 0, err
    assert sorted(_rows(folder / "two.csv")) == sorted(one)
    assert two_out == one_out  # the summary table: same counts, same order of networks
    assert len(list((folder / "two_results").iterdir())) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "ray", "--workers", "2"], "--workers sets the local executor's processes"),
        (["--ray-address", "auto"], "--ray-address needs --executor ray"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--executor", "slurm"], "--executor"),
    ],
)
def test_executor_options_refused_in_one_line(tmp_path: Path, monkeypatch, capsys, args, message) -> None:
    folder = campaign_bench(tmp_path)
    out = folder / "r.csv"
    code, _, err = run_cli(
        monkeypatch, capsys, "verify", "--instances", str(folder / "instances.csv"), "--out", str(out), *args
    )
    assert code == 2 and message in err, err
    assert "Traceback" not in err
    assert not out.exists()  # refused before anything ran


def test_executor_options_need_instances(tmp_path: Path, monkeypatch, capsys) -> None:
    folder = campaign_bench(tmp_path)
    code, _, err = run_cli(
        monkeypatch, capsys, "verify", str(folder / "net_a.onnx"), str(folder / "net_a_tight.vnnlib"), "--workers", "2"
    )
    assert code == 2 and "apply to --instances only" in err, err


def test_ray_not_installed_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    folder = campaign_bench(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    out = folder / "r.csv"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "verify",
        "--instances",
        str(folder / "instances.csv"),
        "--out",
        str(out),
        "--executor",
        "ray",
    )
    assert code == 2, err
    assert "pip install 'nonsingular[ray]'" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
