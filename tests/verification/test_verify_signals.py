"""`nonsingular verify` on SIGINT/SIGTERM (docs/reliability.md): a campaign stops within seconds, keeps every
finished row whole, writes no row for the running instance (whose worker is killed), exits 130/143 with one line
naming what was kept and the command that resumes; a single instance leaves its --out untouched.

The instance that is running when the signal comes is made slow on purpose: the CLI runs in a subprocess whose
`run_instance` sleeps for properties named `slow*` (the forked worker inherits the patch) after writing its pid,
so that the test knows the worker is running and can check it is gone afterwards."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from nonsingular.verification import read_results
from tests.support.verification import mlp, to_onnx, vnnlib

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
_SLOW_CLI = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from nonsingular.verification import instance

    real = instance.run_instance

    def run_instance(onnx, vnnlib, timeout, options=None, on_answer=None):
        if Path(vnnlib).name.startswith("slow"):
            Path(os.environ["WORKER_PID"]).write_text(str(os.getpid()))
            time.sleep(120)
        return real(onnx, vnnlib, timeout, options, on_answer)

    instance.run_instance = run_instance
    from nonsingular.cli import main
    main(sys.argv[1:])
    """
)


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    """net.onnx, two quick properties (a, b), a slow one (slow: the same text, slept on) and a CSV a, b, slow, a."""
    model = mlp((2, 8, 2), 0)
    to_onnx(model, tmp_path / "net.onnx")
    with torch.no_grad():
        top = int(model(torch.tensor([[0.5, 0.5]])).argmax())
    text = vnnlib([0.4, 0.4], [0.6, 0.6], 2, [[(1 - top, top)]])
    for name in ("a", "b", "slow"):
        (tmp_path / f"{name}.vnnlib").write_text(text)
    lines = [f"net.onnx,{p}.vnnlib,20" for p in ("a", "b", "slow", "a")]
    (tmp_path / "instances.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def _start(args: list[str], pid_file: Path) -> subprocess.Popen[str]:
    env = {**ENV, "WORKER_PID": str(pid_file)}
    return subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLI, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so that a Ctrl-C can be sent to the group as a terminal does
    )


def _stop_when_worker_runs(proc: subprocess.Popen[str], pid_file: Path, signum: int, group: bool) -> tuple[int, str]:
    deadline = time.monotonic() + 120
    while not pid_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    sent = time.monotonic()
    if group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 5, err  # the worker is killed at once, not when its instance would end
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)  # the running instance's worker is gone (and reaped)
    return worker, err


@pytest.mark.parametrize(
    ("signum", "group"),
    [(signal.SIGTERM, False), (signal.SIGINT, True), (signal.SIGTERM, True)],
    ids=["sigterm-to-the-runner", "ctrl-c-to-the-group", "sigterm-to-the-group"],  # the last: a scheduler's stop
)
def test_a_stopped_campaign_keeps_the_finished_rows_and_the_printed_command_resumes_it(bench, signum, group):
    out = bench / "results.csv"
    args = ["verify", "--instances", str(bench / "instances.csv"), "--out", str(out), "--timeout", "20"]
    proc = _start(args, bench / "worker.pid")
    _, err = _stop_when_worker_runs(proc, bench / "worker.pid", signum, group)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"stopped by {name}: kept 2 finished row(s) in {out}"), err
    assert "Traceback" not in err
    resume = line.split("resume with: ", 1)[1]
    assert resume == "nonsingular " + " ".join(args)
    text = out.read_text()
    assert text.endswith("\n") and text.count("\n") == 3  # the header and two whole rows: none for `slow`
    kept = read_results(out)
    assert [(r.vnnlib, r.result) for r in kept] == [("a.vnnlib", "unsat"), ("b.vnnlib", "unsat")]
    assert not list(bench.rglob(".*.tmp"))
    if group:
        return  # the resume below is the same for every signal: run once, to keep the suite fast
    # the printed command (here without the slow patch) skips the finished rows and runs the other two
    done = subprocess.run(
        [sys.executable, "-m", "nonsingular", *resume.split()[1:]], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    rows = read_results(out)
    assert [r.vnnlib for r in rows] == ["a.vnnlib", "b.vnnlib", "slow.vnnlib", "a.vnnlib"]
    ran = [line for line in done.stderr.splitlines() if re.match(r"\[\d/4\] ", line)]
    assert rows[:2] == kept and len(ran) == 2  # two instances ran on resume, not four
    assert "units (0 running, 0 queued) 2/2" in done.stderr  # and the units line counted those two


def test_a_stopped_single_instance_leaves_its_result_file_untouched(bench):
    out = bench / "answer.txt"
    out.write_text("unsat\n")  # a previous answer
    args = ["verify", str(bench / "net.onnx"), str(bench / "slow.vnnlib"), "--out", str(out), "--timeout", "20"]
    proc = _start(args, bench / "worker.pid")
    _, err = _stop_when_worker_runs(proc, bench / "worker.pid", signal.SIGTERM, group=False)
    assert proc.returncode == 143, err
    (line,) = err.strip().splitlines()
    assert line.startswith("stopped by SIGTERM: kept nothing") and f"{out} is unchanged" in line
    assert out.read_text() == "unsat\n" and not list(bench.rglob(".*.tmp"))
