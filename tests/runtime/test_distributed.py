"""Two gloo processes on the CPU give the same numbers as one; a dead rank ends the job."""

import json
import subprocess
import sys
from pathlib import Path

from tests.support import script
from tests.support.processes import ENV, assert_ranks_succeeded, assert_succeeded, ranks_report, run_torchrun


def _run(args: list[str], logs: Path | None) -> None:
    """One process, or two under torchrun with each rank's stderr kept in `logs` for the failure report."""
    if logs is None:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=240, env=ENV)
        assert_succeeded(done)
    else:
        assert_ranks_succeeded(run_torchrun(args, logs), logs)


def _evaluate(checkpoint: Path, out: Path, logs: Path | None = None) -> dict:
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
    _run(args, logs)
    return json.loads(out.read_text())


def test_two_processes_match_one(checkpoint, tmp_path):
    single = _evaluate(checkpoint, tmp_path / "one.json")
    double = _evaluate(checkpoint, tmp_path / "two.json", logs=tmp_path / "logs")
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
    logs = tmp_path / "logs"
    done = run_torchrun([str(worker), "20"], logs, timeout=120)
    assert done.returncode != 0, ranks_report(logs, done.stderr)
    assert "without its peer" not in done.stdout, ranks_report(logs, done.stderr)


def test_shutdown_releases_the_ddp_wrapper_before_exit(tmp_path):
    """A DistributedDataParallel wrapper outlives its training step (a reference cycle holding the process
    group); shutdown releases it while the interpreter is alive, so no rank tears gloo down in finalization."""
    worker = script("dist_ddp_worker.py")
    logs = tmp_path / "logs"
    done = run_torchrun([str(worker)], logs, timeout=120)
    assert_ranks_succeeded(done, logs)
    for rank in (0, 1):
        assert f"rank {rank}: wrapper alive after training True, after shutdown False" in done.stdout, done.stdout


def test_two_processes_certify_like_one(checkpoint, tmp_path):
    args = ["-m", "nonsingular", "certify", "-c", str(checkpoint), "--eps-x", "0.01", "--eps-w", "0.0005"]
    args += ["--method", "ibp,crown", "--steps", "5", "--batch-size", "40", "--n-examples", "150", "--device", "cpu"]
    results = []
    for logs, name in ((None, "one.json"), (tmp_path / "logs", "two.json")):
        out = tmp_path / name
        _run([*args, "--out", str(out)], logs)
        results.append(json.loads(out.read_text()))
    single, double = results
    assert single["attacked_accuracy"] == double["attacked_accuracy"]
    assert single["attack_loss_increase"] == double["attack_loss_increase"]
    for method in ("ibp", "crown"):
        a, b = single["methods"][method], double["methods"][method]
        assert a["n_certified"] == b["n_certified"] and a["broken"] == b["broken"] == 0
        assert a["worst_margin"] == b["worst_margin"]
