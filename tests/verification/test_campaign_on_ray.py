"""A verification campaign on a Ray cluster gives the rows of the local executor: on a two-node cluster (two
`ray start`s on this machine, one CPU each) through `verify --instances --executor ray`, and with a Ray worker
SIGKILLed in the middle of an instance (Ray runs that instance again; the driver records each row once)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'nonsingular[ray]' (make test does)")

from nonsingular.runtime.executors.ray_cluster import LocalRayCluster  # noqa: E402
from nonsingular.runtime.executors.ray_executor import RayExecutor  # noqa: E402
from nonsingular.verification import VerifyOptions, instance, read_results, run_campaign, run_isolated  # noqa: E402
from nonsingular.verification.campaign import read_instances  # noqa: E402
from nonsingular.verification.result import VerificationResult  # noqa: E402
from tests.support import run_cli  # noqa: E402
from tests.support.ray_cluster import joined_cluster  # noqa: E402
from tests.support.verification import campaign_bench  # noqa: E402

#: Title prefix of a process running an instance: the Ray worker ("ray::<unit name>"), and its forked child.
INSTANCE = "ray::instance"
WORKER = instance._worker


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    with joined_cluster() as started:
        yield started


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, list[tuple[str, str, str]]]:
    """The benchmark folder and its rows (onnx, vnnlib, result) from the local executor (the reference)."""
    folder = campaign_bench(tmp_path_factory.mktemp("bench"))
    rows = run_campaign(read_instances(folder / "instances.csv"), folder / "local.csv")
    return folder, [(r.onnx, r.vnnlib, r.result) for r in rows]


def _rows(path: Path) -> list[tuple[str, str, str]]:
    return [(r.onnx, r.vnnlib, r.result) for r in read_results(path)]


def test_the_verify_command_on_ray_gives_the_local_rows(cluster, bench, monkeypatch, capsys):
    folder, local = bench
    assert {result for _, _, result in local} == {"sat", "unsat"}  # both answers, decided whatever the load
    out = folder / "ray.csv"
    args = ["--instances", str(folder / "instances.csv"), "--out", str(out)]
    code, stdout, err = run_cli(monkeypatch, capsys, "verify", *args, "--executor", "ray", "--ray-address", "auto")
    assert code == 0, err
    assert sorted(_rows(out)) == sorted(local)  # the CSV is appended in the order instances finish
    assert len(list((folder / "ray_results").iterdir())) == len(local)
    assert "net_a.onnx" in stdout and "net_b.onnx" in stdout
    code, _, err = run_cli(monkeypatch, capsys, "verify", *args, "--executor", "ray")  # all done: nothing runs
    assert code == 0, err
    assert sorted(_rows(out)) == sorted(local)


def _slow_worker(*args: object) -> None:
    time.sleep(1.0)
    WORKER(*args)


def slow_instance(onnx: Path, vnnlib: Path, timeout: float, options: VerifyOptions) -> VerificationResult:
    """The default runner, its instance process pausing first, so that a Ray worker is surely caught with its
    instance process running however fast the machine decides these instances (a fraction of a second)."""
    instance._worker = _slow_worker  # the fork looks it up when it starts the instance process
    return run_isolated(onnx, vnnlib, timeout, options)


def test_a_killed_worker_costs_one_rerun_and_the_rows_stay(cluster, bench, tmp_path):
    folder, local = bench
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module is not importable on workers
    killed: list[str] = []
    stop = threading.Event()

    def kill_one() -> None:
        """SIGKILL the first Ray worker found in the middle of an instance: titled after an instance's unit, with
        the instance's forked process as its child (the worker's own parent is its node's raylet)."""
        while not stop.is_set() and not killed:
            table = cluster.processes()
            busy = {pid for pid, (_, title) in table.items() if title.startswith(INSTANCE)}
            for pid in sorted(busy):
                if table[pid][0] not in busy and any(table[child][0] == pid for child in busy):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(table[pid][1])
                    break
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_one, daemon=True)
    watcher.start()
    try:
        with RayExecutor() as executor:
            rows = run_campaign(
                read_instances(folder / "instances.csv"), tmp_path / "r.csv", runner=slow_instance, executor=executor
            )
    finally:
        stop.set()
        watcher.join()
    assert killed, "no worker was found in the middle of an instance"
    assert [(r.onnx, r.vnnlib, r.result) for r in rows] == local  # the CSV's order, whatever the finishing order
    assert sorted(_rows(tmp_path / "r.csv")) == sorted(local)  # each instance recorded once
    leftover = [t for t in cluster.processes().values() if t[1].startswith(INSTANCE)]
    assert not leftover, leftover  # the killed worker's instance process did not outlive it
