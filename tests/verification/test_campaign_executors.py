"""Where a campaign's instances run changes nothing but the time: `--workers 2` gives the rows of the default
(one after another), the summary keeps the CSV's order, and the executor options are one-line errors where they
cannot apply (Ray not installed, --workers with Ray, executor options for one instance); an instance's process
ends when the process that runs it is killed; the campaign prints the study's units line (per node when its
instances run on several)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nonsingular.runtime.executors import Event, Executor, Finished, OnMessage, Started, Unit
from nonsingular.verification import VerifyOptions, read_results, run_campaign
from nonsingular.verification.campaign import read_instances
from nonsingular.verification.result import Status, VerificationResult
from tests.support import run_cli
from tests.support.processes import ENV
from tests.support.verification import campaign_bench, mlp, to_onnx, vnnlib


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


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):  # not a process, or ended meanwhile
            continue
        if int(stat[1]) == pid and stat[0] != "Z":
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_an_instance_process_ends_with_its_parent(tmp_path: Path) -> None:
    """A parent killed outright (a Ray worker SIGKILLed, whose instance Ray runs again elsewhere) cannot stop its
    instance at the deadline: the instance's process ends itself within a second instead of running on."""
    model = mlp((64, 512, 512, 512, 2), 1)
    to_onnx(model, tmp_path / "big.onnx")
    with torch.no_grad():
        top = int(model(torch.zeros(1, 64)).argmax())
    (tmp_path / "p.vnnlib").write_text(vnnlib([-0.01] * 64, [0.01] * 64, 2, [[(1 - top, top)]]))  # robust near 0
    script = (
        "import sys; from nonsingular.verification import VerifyOptions, run_isolated; "
        "run_isolated(sys.argv[1], sys.argv[2], 120.0, VerifyOptions(methods=()))"  # attack rounds only: long
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "big.onnx"), str(tmp_path / "p.vnnlib")], env=ENV
    )
    children: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not (children := _children(parent.pid)):
            assert parent.poll() is None and time.monotonic() < deadline, "the instance process never started"
            time.sleep(0.05)
        time.sleep(0.5)  # in the middle of the instance
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while any(_running(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_running(pid) for pid in children), "the instance process outlived its parent"
    finally:  # nothing of this test outlives it, whatever failed
        parent.kill()
        parent.wait()
        for pid in children:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_campaign_prints_the_studys_units_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """In a log (stderr not a terminal) the campaign prints the study's units line after each event, beside the
    per-instance lines; a resumed campaign counts only the instances still to run."""
    folder = campaign_bench(tmp_path)
    args = ["verify", "--instances", str(folder / "instances.csv"), "--out", str(folder / "r.csv")]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    units = [line.split("] ", 1)[1] for line in err.splitlines() if "] units (" in line]
    # One after another in this process: each poll starts and finishes one instance.
    assert units == [f"units (0 running, {3 - k} queued) {k + 1}/4" for k in range(4)], err
    assert sum(": unsat " in line or ": sat " in line for line in err.splitlines()) == 4, err
    lines = (folder / "r.csv").read_text().splitlines()
    (folder / "r.csv").write_text("\n".join(lines[:3]) + "\n")  # the header and two rows: two instances left
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    units = [line.split("] ", 1)[1] for line in err.splitlines() if "] units (" in line]
    assert units == ["units (0 running, 1 queued) 1/2", "units (0 running, 0 queued) 2/2"], err


def _answer(onnx: Path, vnnlib: Path, timeout: float, options: VerifyOptions) -> VerificationResult:
    return VerificationResult(Status.UNSAT, 0.0, "ibp")


class _TwoNodes(Executor):
    """Runs units in this process two at a time, as if on two nodes: one poll starts a pair (on node-a and
    node-b), the next finishes it, so the driver sees units running on two nodes at once."""

    kind = "two-nodes"

    def __init__(self) -> None:
        self.queue: list[Unit] = []
        self.running: list[Unit] = []

    def submit(self, unit: Unit) -> None:
        self.queue.append(unit)

    def poll(self, on_message: OnMessage, timeout: float) -> list[Event]:
        if self.running:
            done, self.running = self.running, []
            return [Finished(u.name, u.fn(None, *u.args)) for u in done]
        self.running, self.queue = self.queue[:2], self.queue[2:]
        return [Started(u.name, node, 0) for u, node in zip(self.running, ("node-a", "node-b"), strict=False)]


def test_the_units_line_names_the_nodes_when_instances_run_on_several(tmp_path: Path) -> None:
    folder = campaign_bench(tmp_path)
    lines: list[str] = []
    rows = run_campaign(
        read_instances(folder / "instances.csv"),
        folder / "r.csv",
        runner=_answer,
        executor=_TwoNodes(),
        units_progress=lambda label, done, total: lines.append(f"{label} {done}/{total}"),
    )
    assert [r.result for r in rows] == ["unsat"] * 4
    assert lines == [
        "units (2 running, 2 queued; node-a: 1, node-b: 1) 0/4",
        "units (0 running, 2 queued) 2/4",
        "units (2 running, 0 queued; node-a: 1, node-b: 1) 2/4",
        "units (0 running, 0 queued) 4/4",
    ]
