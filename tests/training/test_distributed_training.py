"""Data-parallel training: two gloo processes on the CPU train to the weights one process trains to.

awp finds its shared weight perturbation from gradients summed over the ranks, joint-at's per-example random
starts are keyed by global example index, and a run resumed under torchrun continues where it stopped. The
tolerance covers float summation order (DDP averages two half-batch gradients; one process sums one batch).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores: one thread each


def _train(launcher: list[str], config: Path, out: Path, *extra: str) -> None:
    args = ["-m", "nonsingular", "train", "--config", str(config), "--out", str(out), "--device", "cpu", "-q"]
    done = subprocess.run([*launcher, *args, *extra], capture_output=True, text=True, timeout=240, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]


def _max_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "run.toml"
    # 301 training examples in batches of 64: the last batch (45) splits unevenly over two ranks.
    path.write_text("n_train = 301\nwidths = [32, 32]\nbatch_size = 64\nattack_steps = 3\neval_steps = 2\n")
    return path


@pytest.mark.parametrize("objective", ["awp", "joint-at"])
def test_two_processes_train_like_one(tmp_path: Path, config: Path, objective: str) -> None:
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    flags = ["--objective", objective, "--epochs", "2"]
    _train([sys.executable], config, one, *flags)
    if objective == "awp":  # stop after one epoch and resume under torchrun
        _train(TORCHRUN, config, two, "--objective", objective, "--epochs", "1")
        _train(TORCHRUN, config, two, *flags, "--resume")
    else:
        _train(TORCHRUN, config, two, *flags)
    assert _max_difference(one, two) < 1e-5
