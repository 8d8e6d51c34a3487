"""A two-node Ray cluster on this machine, joined by the test process, for the tests that run units on Ray."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nonsingular.runtime.executors.ray_cluster import LocalRayCluster

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def joined_cluster(nodes: int = 2, cpus: int = 1) -> Iterator[LocalRayCluster]:
    """`nodes` Ray nodes of `cpus` CPUs each (a temporary folder of their own; their workers import this
    checkout's nonsingular and tests), joined by this process; every process the cluster started is stopped
    however the block ends."""
    import ray

    env = {
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "OMP_NUM_THREADS": "1",
    }
    with LocalRayCluster(nodes=nodes, cpus=cpus, env=env) as started:
        ray.init(address=started.address, log_to_driver=False, logging_level="warning")
        try:
            yield started
        finally:
            ray.shutdown()
