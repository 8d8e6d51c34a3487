"""Wall time of one study on this machine: one process, then a 1-node and a 2-node local Ray cluster (one CPU
per node), each from an empty model cache, and whether all three give the same numbers.

Usage: python benchmarks/study_ray_nodes.py [STUDY]

STUDY is a shipped study's name (mnist-mlp-quick: about 300 s of CPU per run on an idle machine), a study file,
`tiny` (the default): 2 models x 2 seeds on 24 digits, 1 epoch, PGD-2, the grid of the workers test
(tests/test_study_workers.py), a measurement that fits a loaded machine, or `small`: the same with 4 seeds,
5 epochs and 120 examples (about four times the work).

The three runs alternate with nothing else of ours running; on a machine shared with other jobs only the ratios
of runs made together mean anything, and even they move with the other jobs' load (print `uptime` beside them).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.support

from nonsingular.runtime.executors.ray_cluster import LocalRayCluster
from nonsingular.runtime.executors.ray_executor import RayExecutor
from nonsingular.study import load_study_config, run_study
from nonsingular.study.records import StudyResults
from tests.support.study_configs import TWO_MODELS_TWO_SEEDS


def _numbers(results: StudyResults) -> dict:
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.endswith("seconds") and k not in {"cache_file"}}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(results.to_json()["models"])


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    root = Path(tempfile.mkdtemp(prefix="ns-bench-"))
    if name in ("tiny", "small"):
        text = TWO_MODELS_TWO_SEEDS
        if name == "small":
            text = text.replace("n_examples = 24", "n_examples = 120").replace("seeds = [0, 1]", "seeds = [0, 1, 2, 3]")
            text = text.replace("epochs = 1", "epochs = 5")
        (root / f"{name}.toml").write_text(text)
        name = str(root / f"{name}.toml")
    config = load_study_config(name)
    print(f"study {name}: {len(config.models)} models x {len(config.run_seeds)} seeds; load {os.getloadavg()}")
    timings, numbers = {}, {}
    t0 = time.perf_counter()
    _, results = run_study(config, root / "local" / "out", root / "local" / "cache")
    timings["1 process"], numbers["1 process"] = time.perf_counter() - t0, _numbers(results)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {"PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]), "OMP_NUM_THREADS": "1"}
    for nodes in (1, 2):
        with LocalRayCluster(nodes=nodes, cpus=1, env=env) as cluster:
            ray.init(address=cluster.address, log_to_driver=False, logging_level="warning")
            try:
                label = f"ray, {nodes} node{'s' if nodes > 1 else ''}"
                t0 = time.perf_counter()
                with RayExecutor() as executor:
                    _, results = run_study(config, root / label / "out", root / label / "cache", executor=executor)
                timings[label], numbers[label] = time.perf_counter() - t0, _numbers(results)
            finally:
                ray.shutdown()
        print(f"{label}: {timings[label]:.1f} s; load {os.getloadavg()}", flush=True)
    for label, seconds in timings.items():
        same = numbers[label] == numbers["1 process"]
        ratio = timings["1 process"] / seconds
        print(f"{label:>14}: {seconds:7.1f} s  (1 process / this = {ratio:.2f}x)  same numbers: {same}")
    print(json.dumps({k: round(v, 1) for k, v in timings.items()}))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
