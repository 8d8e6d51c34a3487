"""A two-node Ray cluster on this machine, joined by the test process, for the tests that run units on Ray; and
what the tests of a killed driver need: a driver process's environment, a wait for a real sign of progress, and
a wait for the cluster's processes that must end."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nonsingular.runtime.executors.ray_cluster import LocalRayCluster

ROOT = Path(__file__).resolve().parents[2]


def checkout_env() -> dict[str, str]:
    """This environment with this checkout's nonsingular and tests first on the path, one torch thread."""
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@contextmanager
def joined_cluster(nodes: int = 2, cpus: int = 1) -> Iterator[LocalRayCluster]:
    """`nodes` Ray nodes of `cpus` CPUs each (a temporary folder of their own; their workers import this
    checkout's nonsingular and tests), joined by this process; every process the cluster started is stopped
    however the block ends, and the block fails if any of them is still running after that (an orphaned
    worker would compute on for nobody)."""
    import ray

    env = {key: checkout_env()[key] for key in ("PYTHONPATH", "OMP_NUM_THREADS")}
    with LocalRayCluster(nodes=nodes, cpus=cpus, env=env) as started:
        ray.init(address=started.address, log_to_driver=False, logging_level="warning")
        try:
            yield started
        finally:
            ray.shutdown()
    deadline = time.monotonic() + 10  # SIGKILLed processes vanish from /proc as they are reaped
    while (survivors := started.processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not survivors, f"processes of the stopped Ray cluster still run: {sorted(survivors.values())}"


def wait_for(process: subprocess.Popen[bytes], ready: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll `ready` until it holds while `process` runs; fails naming `what` if the process ends first or
    `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the driver ended (exit status {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.02)


def sigkill_when(process: subprocess.Popen[bytes], ready: Callable[[], bool], what: str) -> None:
    """SIGKILL `process` (a driver) as soon as `ready` holds (`wait_for`), as a crash would end it mid-run; the
    process is killed and reaped however the wait ends, and must have died of that SIGKILL."""
    try:
        wait_for(process, ready, what)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL


def busy(cluster: LocalRayCluster, prefixes: tuple[str, ...]) -> dict[int, tuple[int, str]]:
    """The cluster's processes whose titles start with one of `prefixes` (a Ray worker running a task is
    titled 'ray::<task name>'): pid -> (parent pid, title)."""
    return {pid: info for pid, info in cluster.processes().items() if info[1].startswith(prefixes)}


def left_running(cluster: LocalRayCluster, prefixes: tuple[str, ...], timeout: float = 30.0) -> list[str]:
    """Titles of the cluster's processes that still run a task of `prefixes` after up to `timeout` seconds
    (Ray ends the workers of a driver that died; an instance's process ends with its worker)."""
    deadline = time.monotonic() + timeout
    while (found := busy(cluster, prefixes)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return sorted(title for _, title in found.values())
