"""Two gloo processes on the CPU give the same numbers as one; a dead rank ends the job."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import script

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _evaluate(launcher: list[str], checkpoint: Path, out: Path) -> dict:
    args = [
        "-m",
        "nonsingular",
        "evaluate",
        "-c",
        str(checkpoint),
        "--eps-x",
        "0.03",
        "--eps-w",
        "0.002",
        "--steps",
        "4",
        "--batch-size",
        "32",
        "--n-examples",
        "150",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores: one thread each
    done = subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


def test_two_processes_match_one(checkpoint, tmp_path):
    single = _evaluate([sys.executable], checkpoint, tmp_path / "one.json")
    double = _evaluate(TORCHRUN, checkpoint, tmp_path / "two.json")
    for kind, scopes in single["cells"].items():
        for scope, cell in scopes.items():
            other = double["cells"][kind][scope]
            assert (cell is None) == (other is None)
            if cell is not None:
                assert cell["accuracy"] == other["accuracy"], (kind, scope)
                assert cell["checked"] and other["checked"]
    assert single["clean_accuracy"] == double["clean_accuracy"]


def test_dead_rank_ends_the_job(tmp_path):
    worker = script("dead_rank_worker.py")
    done = subprocess.run([*TORCHRUN, str(worker), "20"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "without its peer" not in done.stdout


def test_two_processes_certify_like_one(checkpoint, tmp_path):
    args = ["-m", "nonsingular", "certify", "-c", str(checkpoint), "--eps-x", "0.01", "--eps-w", "0.0005"]
    args += ["--method", "ibp,crown", "--steps", "5", "--batch-size", "40", "--n-examples", "150", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = []
    for launcher, name in (([sys.executable], "one.json"), (TORCHRUN, "two.json")):
        out = tmp_path / name
        done = subprocess.run(
            [*launcher, *args, "--out", str(out)], capture_output=True, text=True, timeout=240, env=env
        )
        assert done.returncode == 0, done.stderr[-2000:]
        results.append(json.loads(out.read_text()))
    single, double = results
    assert single["attacked_accuracy"] == double["attacked_accuracy"]
    assert single["attack_loss_increase"] == double["attack_loss_increase"]
    for method in ("ibp", "crown"):
        a, b = single["methods"][method], double["methods"][method]
        assert a["n_certified"] == b["n_certified"] and a["broken"] == b["broken"] == 0
        assert a["worst_margin"] == b["worst_margin"]
