"""A study on a Ray cluster gives the numbers of a one-process run: on a two-node cluster (two `ray start`s on
this machine, one CPU each), with a worker SIGKILLed in the middle of a unit, with the driver SIGKILLed in the
middle of the run and started again, and when a study started here continues on the cluster and finishes here
again. A unit that raises on a worker stops the run naming it."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'nonsingular[ray]' (make test does)")

from nonsingular.models.checkpoint import load_checkpoint  # noqa: E402
from nonsingular.runtime.executors import Unit, UnitError, run_units  # noqa: E402
from nonsingular.runtime.executors.ray_cluster import LocalRayCluster  # noqa: E402
from nonsingular.runtime.executors.ray_executor import RayExecutor  # noqa: E402
from nonsingular.study import load_study_config, run_study  # noqa: E402
from tests.support.ray_cluster import busy, checkout_env, joined_cluster, left_running, sigkill_when  # noqa: E402

CONFIG = """
name = "executors"
n_examples = 16
seeds = [0, 1]
[training]
epochs = 1
widths = [16]
[architecture]
name = "mlp"
widths = [16]
[attack]
kind = "pgd"
steps = 2
[grid]
eps_x = [0.05]
eps_w = [0.0, 0.002]
[certify]
methods = ["ibp"]
[radius]
enabled = false
[scale]
enabled = false
[headline]
eps_x = 0.05
eps_w = 0.002
[[models]]
name = "standard"
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    """A two-node Ray cluster on this machine (1 CPU per node), joined by this process; every process it started
    is stopped however the tests end."""
    with joined_cluster() as started:
        yield started


PROVENANCE = {"cache_file", "cached"}


def _numbers(folder: Path) -> tuple[dict, dict[str, list[dict]]]:
    """results.json and every CSV without what may differ between runs with the same numbers: timings, and
    whether (and from where) a model came from the cache."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.endswith("seconds") and k not in PROVENANCE}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    results = strip(json.loads((folder / "results.json").read_text()))
    tables = {
        path.name: [strip(row) for row in csv.DictReader(path.read_text().splitlines())]
        for path in sorted(folder.glob("*.csv"))
    }
    return results, tables


#: Title prefixes of a Ray worker running one of the study's units.
UNIT = ("ray::train", "ray::evaluate")


class _Stop(Exception):
    """Ends a study from its progress callback, as a killed driver would (its pieces so far are kept)."""


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> tuple[Path, Path]:
    """The study run in this process (the reference numbers); (config file, output folder)."""
    root = tmp_path_factory.mktemp("local")
    config = root / "study.toml"
    config.write_text(CONFIG)
    run_study(load_study_config(config), root / "out", root / "cache")
    return config, root / "out"


def test_ray_study_matches_local_with_a_worker_killed(cluster, local_run, tmp_path):
    config_path, local_out = local_run
    config = load_study_config(config_path)
    killed: list[str] = []  # the killed worker's title: "ray::<unit>"
    nodes: set[int] = set()  # raylets (one per node) whose workers were seen running a unit
    ticks: list[str] = []
    heard: set[str] = set()  # units the driver had heard from when the worker was killed

    def progress(label: str, done: int, total: int) -> None:
        ticks.append(label)
        if not label.startswith("units"):
            model_seed, stage = label.split(": ", 1)
            heard.add(f"ray::{'train' if stage == 'training' else 'evaluate'} {model_seed}")
        busy = {pid: (raylet, title) for pid, (raylet, title) in cluster.processes().items() if title.startswith(UNIT)}
        nodes.update(raylet for raylet, _ in busy.values())
        if killed or label.startswith("units") or not busy:
            return
        pid, (_, title) = min(busy.items())
        os.kill(pid, signal.SIGKILL)  # a worker in the middle of a unit: its title was read just now
        killed.append(title)
        killed.append("heard" if title in heard else "not heard")

    with RayExecutor() as executor:
        assert executor.nodes() == 2
        run_study(config, tmp_path / "ray", tmp_path / "cache", progress=progress, executor=executor)
    assert killed, "no worker was found in the middle of a unit"
    # The run completed with the numbers of one process: Ray ran the killed unit again.
    assert _numbers(tmp_path / "ray") == _numbers(local_out)
    assert len(nodes) == 2, (nodes, ticks)  # both nodes ran units
    if killed[1] == "heard":  # the driver had the unit's start before the kill: the rerun shows as a restart
        assert any("1 restarted" in t for t in ticks), (killed, ticks)


def test_study_moves_between_local_and_ray(cluster, local_run, tmp_path):
    """Started here, stopped; resumed on the cluster, stopped again; finished here: the numbers of one run."""
    config_path, local_out = local_run
    config = load_study_config(config_path)
    out, cache = tmp_path / "out", tmp_path / "cache"

    def stop_after(units: int):
        def progress(label: str, done: int, total: int) -> None:
            if label.startswith("units") and done >= units:
                raise _Stop

        return progress

    with pytest.raises(_Stop):
        run_study(config, out, cache, progress=stop_after(1))  # seed 0 trained (and cached) only
    with RayExecutor() as executor, pytest.raises(_Stop):
        run_study(config, out, cache, progress=stop_after(3), executor=executor)
    pieces = json.loads((out / "state.json").read_text())["values"]
    assert any(k.startswith("cell/standard/") for k in pieces)  # the cluster's pieces, recorded here
    _, results = run_study(config, out, cache)
    assert results.models["standard"].runs[0].cached
    assert _numbers(out) == _numbers(local_out)


@pytest.fixture(scope="module")
def local_run_3_seeds(tmp_path_factory) -> tuple[Path, Path]:
    """The study with three seeds run in this process: (config file, output folder). Three training units on
    two CPUs: when the first model is cached, a third training unit surely runs."""
    root = tmp_path_factory.mktemp("local3")
    config = root / "study.toml"
    config.write_text(CONFIG.replace("seeds = [0, 1]", "seeds = [0, 1, 2]"))
    run_study(load_study_config(config), root / "out", root / "cache")
    return config, root / "out"


def test_a_killed_driver_started_again_resumes_from_the_cache(cluster, local_run_3_seeds, tmp_path):
    """`nonsingular study --executor ray` SIGKILLed once a model is in the cache while other units run; the same
    command then finishes with the numbers of one uninterrupted process, reusing the cached model. The killed
    driver leaves nothing that harms: its folder lock is stale (broken by the restart), its units' workers end,
    and the cache and state hold whole files only."""
    config_path, local_out = local_run_3_seeds
    out, cache = tmp_path / "out", tmp_path / "cache"
    command = [sys.executable, "-m", "nonsingular", "study", "--config", str(config_path), "--out", str(out)]
    command += ["--cache", str(cache), "--executor", "ray", "--ray-address", cluster.address]
    with open(tmp_path / "first.log", "wb") as log:
        driver = subprocess.Popen(command, env=checkout_env(), stdout=log, stderr=subprocess.STDOUT)

        def cached_and_running() -> bool:
            return any(cache.glob("*.safetensors")) and bool(busy(cluster, UNIT))

        sigkill_when(driver, cached_and_running, "a cached model while units run")
    lock = json.loads((out / ".lock").read_text())
    assert lock["pid"] == driver.pid  # left behind: the restart must judge it stale, not wait for it
    assert left_running(cluster, UNIT) == []  # Ray ended the dead driver's units: no worker computes for nobody
    cached = list(cache.glob("*.safetensors"))  # counted once no unit of the killed run can add one

    again = subprocess.run(command, env=checkout_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "units (" in again.stderr  # the units line, as plain lines in a log
    assert _numbers(out) == _numbers(local_out)
    runs = json.loads((out / "results.json").read_text())["models"]["standard"]["runs"]
    assert sum(run["cached"] for run in runs) == len(cached)  # the models cached before the kill were reused
    assert not (out / ".lock").exists()
    leftovers = [p.name for folder in (out, cache) for p in folder.iterdir() if p.name.endswith((".tmp", ".lock"))]
    assert leftovers == []  # no torn temporary, no lock of a killed trainer
    for path in cache.glob("*.safetensors"):
        load_checkpoint(path)  # every cached model is whole


def _fails(outbox, text: str) -> None:
    raise ZeroDivisionError(text)


def _works(outbox) -> int:
    return 1


def test_a_unit_that_raises_stops_the_run_naming_it(cluster):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module is not importable on workers
    units = [Unit("fine", _works), Unit("broken", _fails, ("no luck",))]
    with (
        RayExecutor() as executor,
        pytest.raises(UnitError, match=r"unit 'broken' failed on .*: ZeroDivisionError: no"),
    ):
        run_units(executor, units, lambda unit, message: None)
