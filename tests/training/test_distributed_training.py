"""Data-parallel training: two gloo processes on the CPU train to the weights one process trains to.

awp finds its shared weight perturbation from gradients summed over the ranks, joint-at's per-example random
starts are keyed by global example index, and a run resumed under torchrun continues where it stopped. The
tolerance covers float summation order (DDP averages two half-batch gradients; one process sums one batch).
"""

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.support.processes import ENV, assert_ranks_succeeded, assert_succeeded, run_torchrun


def _train(config: Path, out: Path, *extra: str, logs: Path | None = None) -> None:
    """One process, or two under torchrun with each rank's stderr kept in `logs` for the failure report."""
    args = ["-m", "nonsingular", "train", "--config", str(config), "--out", str(out), "--device", "cpu", "-q"]
    if logs is None:
        done = subprocess.run([sys.executable, *args, *extra], capture_output=True, text=True, timeout=240, env=ENV)
        assert_succeeded(done)
    else:
        assert_ranks_succeeded(run_torchrun([*args, *extra], logs), logs)


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
    _train(config, one, *flags)
    if objective == "awp":  # stop after one epoch and resume under torchrun
        _train(config, two, "--objective", objective, "--epochs", "1", logs=tmp_path / "logs-first")
        _train(config, two, *flags, "--resume", logs=tmp_path / "logs-resumed")
    else:
        _train(config, two, *flags, logs=tmp_path / "logs")
    assert _max_difference(one, two) < 1e-5
