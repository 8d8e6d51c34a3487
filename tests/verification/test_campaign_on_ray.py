"""A verification campaign on a Ray cluster gives the rows of the local executor: on a two-node cluster (two
`ray start`s on this machine, one CPU each) through `verify --instances --executor ray`, with a Ray worker
SIGKILLed in the middle of an instance (Ray runs that instance again; the driver records each row once), and
with the driver SIGKILLed in the middle of the campaign and started again (it runs only the rows missing)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'nonsingular[ray]' (make test does)")

from nonsingular.runtime.executors.ray_cluster import LocalRayCluster  # noqa: E402
from nonsingular.runtime.executors.ray_executor import RayExecutor  # noqa: E402
from nonsingular.verification import read_results, run_campaign  # noqa: E402
from nonsingular.verification.campaign import read_instances  # noqa: E402
from tests.support import run_cli  # noqa: E402
from tests.support.ray_cluster import busy, checkout_env, joined_cluster, left_running, sigkill_when  # noqa: E402
from tests.support.verification import campaign_bench, slow_instance  # noqa: E402

#: Title prefix of a process running an instance: the Ray worker ("ray::<unit name>"), and its forked child.
INSTANCE = "ray::instance"


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


def test_a_killed_worker_costs_one_rerun_and_the_rows_stay(cluster, bench, tmp_path):
    folder, local = bench
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


#: A campaign driver on the cluster at argv[3] that prints the CLI's units lines (the Python API, for the slow
#: runner the CLI does not offer).
DRIVER = """
import sys, time
from nonsingular.cli.common import progress_lines
from nonsingular.runtime.executors.ray_executor import RayExecutor
from nonsingular.verification import run_campaign
from nonsingular.verification.campaign import read_instances
from tests.support.verification import slow_instance

with RayExecutor(sys.argv[3]) as executor:
    todo, lines = read_instances(sys.argv[1]), progress_lines(time.perf_counter())
    run_campaign(todo, sys.argv[2], runner=slow_instance, executor=executor, units_progress=lines)
"""


def test_a_killed_driver_started_again_runs_only_the_missing_rows(cluster, bench, tmp_path):
    """The campaign's driver SIGKILLed once a row is written while instances run: its instances end on the
    cluster (no worker or instance process decides for nobody), and the same command finishes the campaign with
    the local rows, each instance once."""
    folder, local = bench
    out = tmp_path / "r.csv"
    command = [sys.executable, "-c", DRIVER, str(folder / "instances.csv"), str(out), cluster.address]
    with open(tmp_path / "first.log", "wb") as log:
        driver = subprocess.Popen(command, env=checkout_env(), stdout=log, stderr=subprocess.STDOUT)

        def a_row_and_an_instance_running() -> bool:
            return out.exists() and len(read_results(out)) >= 1 and bool(busy(cluster, (INSTANCE,)))

        sigkill_when(driver, a_row_and_an_instance_running, "a row written while instances run")
    # The units line of the CLI, from the first event on. Its exact counts depend on Ray's scheduling and the
    # load (after the previous test's killed worker, Ray sometimes ran one instance at a time here); the
    # fake-executor test in test_campaign_executors.py checks them exactly, per node included.
    first = (tmp_path / "first.log").read_text().splitlines()
    line = r"\[ *[\d.]+ s\] units \([0-2] running, [0-3] queued(; \S+: 1, \S+: 1)?\) [0-3]/4"
    assert first and all(re.fullmatch(line, text) for text in first), first
    assert left_running(cluster, (INSTANCE,)) == []
    before = _rows(out)
    assert 1 <= len(before) < len(local)
    again = subprocess.run(command, env=checkout_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = _rows(out)
    assert rows[: len(before)] == before  # the rows of the killed run stay as they were
    assert sorted(rows) == sorted(local)  # and each instance has one row, with the local answer
    assert len(list((tmp_path / "r_results").iterdir())) == len(local)
