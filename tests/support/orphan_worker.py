"""For tests/study/test_workers.py: a process that spawns a child running `exit_with_parent`, then dies
abruptly; the child must notice and exit. Usage: python orphan_worker.py PID_FILE."""

import multiprocessing
import os
import sys
import time
from pathlib import Path

from nonsingular.runtime.executors import exit_with_parent


def child(pid_file: str) -> None:
    exit_with_parent(poll_seconds=0.1)
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(120)  # far longer than the test waits: only the watchdog can end it in time


if __name__ == "__main__":
    target = sys.argv[1]
    process = multiprocessing.get_context("spawn").Process(target=child, args=(target,))
    process.start()
    while not Path(target).exists():
        time.sleep(0.05)
    os._exit(0)  # like a SIGKILL: no cleanup, the child is orphaned
