"""Run the tests' child processes (torchrun jobs and single CLI processes) so that a failure says what each
process did: its exit status or the signal that killed it, and the head of its own stderr.

torchrun prints its own traceback after the ranks' output, so the tail of its stderr shows only that a child
failed; each rank's stderr is therefore also written to its own file (`--log-dir`, `--tee 3`) and reported
from the start, where the cause is. PYTHONFAULTHANDLER makes a rank killed by a fatal signal (SIGABRT,
SIGSEGV) print the Python stack of every thread before it dies.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
#: Two processes on two cores: one thread each; a fatal signal prints every thread's Python stack.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
HEAD = 3000  # characters of each process's stderr shown from its start
TAIL = 1500  # and from its end (torchrun's own summary)


def run_torchrun(args: list[str], log_dir: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """torchrun ARGS with two ranks, each rank's stdout and stderr also kept under `log_dir`; a run that does
    not end within `timeout` seconds fails with every rank's report."""
    command = [*TORCHRUN, "--log-dir", str(log_dir), "--tee", "3", *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"torchrun ran past {timeout:g} s\n" + ranks_report(log_dir, str(err.stderr))) from None


def exit_status(code: int) -> str:
    """'exit status 3', or 'killed by SIGABRT' for a negative (signal) code."""
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def rank_exit_codes(torchrun_stderr: str) -> dict[int, int]:
    """rank -> exit code of the ranks torchrun reports as failed (its 'Failures' and 'Root Cause' sections)."""
    found = re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)", torchrun_stderr)
    return {int(rank): int(code) for rank, code in found}


def _head(text: str) -> str:
    return text if len(text) <= HEAD else text[:HEAD] + f"\n[... {len(text) - HEAD} more characters]"


def ranks_report(log_dir: Path, torchrun_stderr: str) -> str:
    """Per rank: how it ended (as torchrun reports it) and the head of its own stderr; then torchrun's tail."""
    codes = rank_exit_codes(torchrun_stderr)
    files = sorted(log_dir.glob("*/attempt_*/*/stderr.log"), key=lambda p: (p.parts[-3], int(p.parent.name)))
    parts = []
    for path in files:
        rank = int(path.parent.name)
        ended = exit_status(codes[rank]) if rank in codes else "not reported as failed"
        parts.append(f"--- rank {rank} ({path.parts[-3]}): {ended}; its stderr:\n{_head(path.read_text())}")
    if not files:
        parts.append(f"--- no rank logs under {log_dir}")
    parts.append(f"--- torchrun's stderr, last {TAIL} characters:\n{torchrun_stderr[-TAIL:]}")
    return "\n".join(parts)


def assert_ranks_succeeded(done: subprocess.CompletedProcess[str], log_dir: Path) -> None:
    """Fail with every rank's report unless the torchrun job exited 0."""
    assert done.returncode == 0, f"torchrun: {exit_status(done.returncode)}\n" + ranks_report(log_dir, done.stderr)


def assert_succeeded(done: subprocess.CompletedProcess[str]) -> None:
    """Fail with the process's exit status (or signal) and the head and tail of its stderr unless it exited 0."""
    err = done.stderr
    shown = err if len(err) <= HEAD + TAIL else f"{err[:HEAD]}\n[...]\n{err[-TAIL:]}"
    assert done.returncode == 0, f"{exit_status(done.returncode)}; stderr:\n{shown}"
