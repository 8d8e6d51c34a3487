"""A Ray cluster of several nodes on this machine, for trying `--executor ray`, tests and measurements.

Each node is one `ray start` (the first the head), limited to `cpus` CPUs, all in a temporary folder of their
own. The cluster owns every process it started, and only those: each `ray start` session's processes and their
descendants (Ray's workers run in sessions of their own), and any process that carries the cluster's mark in its
environment (a worker whose raylet died is adopted by init and leaves the tree); stopping it ends them all,
never another Ray on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .ray_executor import import_ray

__all__ = ["LocalRayCluster"]


#: The environment variable that marks the processes of one cluster (its value: the cluster's folder).
MARK = "NONSINGULAR_RAY_CLUSTER"


def _processes(mark: bytes) -> dict[int, tuple[int, int, str, bool]]:
    """pid -> (parent pid, process group, command line, whether its environment holds `mark`) of every process
    on this machine (Linux /proc); zombies are left out (they hold nothing and end with their parent)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] == "Z":
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            try:
                marked = mark in (entry / "environ").read_bytes().split(b"\0")
            except PermissionError:  # another user's process: never ours
                marked = False
        except OSError:  # ended meanwhile
            continue
        found[int(entry.name)] = (int(stat[1]), int(stat[2]), title, marked)
    return found


class LocalRayCluster:
    """`nodes` Ray nodes on this machine with `cpus` CPUs each.

    Args:
        nodes: how many `ray start`s (the first is the head).
        cpus: CPUs each node offers to tasks.
        env: extra environment of the nodes (their workers inherit it), e.g. PYTHONPATH.
    """

    def __init__(self, nodes: int = 2, cpus: int = 1, env: dict[str, str] | None = None) -> None:
        if nodes < 1 or cpus < 1:
            raise ValueError(f"a cluster needs nodes >= 1 and cpus >= 1, got {nodes} and {cpus}")
        import_ray()
        self.nodes, self.cpus = nodes, cpus
        # Ray ends idle workers beyond one per CPU; the Ray executor's inbox is an actor with a process of
        # its own, which on a 1-CPU node would make every unit start a new worker (and import torch again).
        soft_limit = str(cpus + 1)
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_num_workers_soft_limit": soft_limit,
            **(env or {}),
        }
        self.address = ""
        self._groups: set[int] = set()
        self._temp: Path | None = None
        self._mark = b""

    def _ray_start(self, args: list[str]) -> None:
        command = [str(Path(sys.executable).with_name("ray")), "start", "--num-cpus", str(self.cpus), *args]
        command.append("--disable-usage-stats")
        process = subprocess.Popen(
            command, env=self.env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._groups.add(process.pid)  # its daemons stay in the session it leads
        out, _ = process.communicate(timeout=180)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {out.strip().splitlines()[-1] if out.strip() else ''}")

    def start(self) -> LocalRayCluster:
        """Start the nodes and wait until all have joined; returns self (its `address` set)."""
        self._temp = Path(tempfile.mkdtemp(prefix="ns-ray-", dir="/tmp"))  # Ray's socket paths must stay short
        # A home of its own: a `ray.init()` run before on this machine leaves ~/.ray/auth_token, which a head
        # started from the same home enforces on the nodes that join it (Ray 2.60), and they have no token.
        self.env["HOME"] = str(self._temp)
        self.env[MARK] = str(self._temp)  # Ray's daemons may rewrite their titles and environments; workers keep it
        self._mark = f"{MARK}={self._temp}".encode()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        self.address = f"127.0.0.1:{port}"
        try:
            head = ["--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--temp-dir", str(self._temp)]
            self._ray_start([*head, "--include-dashboard", "false"])
            for _ in range(self.nodes - 1):
                self._ray_start(["--address", self.address])
            deadline = time.monotonic() + 60
            while self.alive() < self.nodes:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {self.alive()} of {self.nodes} Ray nodes joined within 60 s")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def alive(self) -> int:
        """Nodes alive, as the cluster's head counts them (joins the cluster for a moment if not joined)."""
        ray = import_ray()
        if ray.is_initialized():
            return sum(1 for n in ray.nodes() if n.get("Alive"))
        ray.init(address=self.address, log_to_driver=False, logging_level="warning")
        try:
            return sum(1 for n in ray.nodes() if n.get("Alive"))
        finally:
            ray.shutdown()

    def processes(self) -> dict[int, tuple[int, str]]:
        """pid -> (parent pid, command line) of every process of this cluster (daemons and workers; a worker's
        parent is its node's raylet). After `stop`: whatever of the cluster survived it (nothing, unless a
        process escaped the kill)."""
        if not self._mark:
            return {}
        table = _processes(self._mark)
        mine = {pid for pid, (_, group, _, marked) in table.items() if group in self._groups or marked}
        grown = True
        while grown:
            more = {pid for pid, (parent, _, _, _) in table.items() if parent in mine} - mine
            mine |= more
            grown = bool(more)
        return {pid: (table[pid][0], table[pid][2]) for pid in mine}

    def stop(self) -> None:
        """Kill every process of this cluster and remove its folder.

        The processes are frozen (SIGSTOP) until a look finds none new, then killed: a raylet killed after a look
        that missed the worker it was starting would leave that worker running on, adopted by init.
        """
        frozen: set[int] = set()
        for _ in range(20):
            more = set(self.processes()) - frozen
            if not more:
                break
            for pid in more:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            frozen |= more
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._groups.clear()
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
