"""The local process pool: units in N spawned processes on this machine (`--workers N`).

Each worker gets its share of this process's CPUs as torch threads. Messages travel through a queue served by a
manager process; the driver drains it while it waits. Every spawned process ends itself when the driver's
process is gone, so a killed driver leaves no worker burning a core.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing.managers import SyncManager
from queue import Empty
from types import TracebackType
from typing import Any

from ..signals import Stopped
from .base import Event, Executor, Failed, Finished, OnMessage, Outbox, Started, StartMark, Unit

__all__ = ["ProcessPool", "QueueOutbox", "exit_with_parent", "run_in_worker", "start_unit"]


def exit_with_parent(poll_seconds: float = 1.0) -> None:
    """Run in each spawned process of a pool (workers and the queue's manager): end this process when the
    driver's process is gone. A killed study (SIGTERM, SIGKILL, a closed terminal) otherwise leaves its workers
    running their units to the end, each burning a core for results nobody will read."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="nonsingular-exit-with-parent", daemon=True).start()


class QueueOutbox:
    """A worker's outbox: (unit, message) pairs on a queue the driver drains (a manager queue, a Ray queue)."""

    def __init__(self, queue: Any, unit: str) -> None:
        self.queue, self.unit = queue, unit

    def send(self, message: Any) -> None:
        self.queue.put((self.unit, message))


def run_in_worker(queue: Any, unit: str, fn: Any, threads: int, args: tuple[Any, ...], *inputs: Any) -> Any:
    """A unit's entry point in a pool worker: torch threads, the start mark, then the unit."""
    return start_unit(StartMark.here(), QueueOutbox(queue, unit), fn, threads, args, inputs)


def start_unit(
    mark: StartMark, outbox: Outbox, fn: Any, threads: int, args: tuple[Any, ...], inputs: tuple[Any, ...]
) -> Any:
    """Run a unit in this worker: `threads` torch threads, its start mark to the driver, then fn(outbox, ...)."""
    outbox.send(mark)  # first: the driver counts the unit as running from here (a fresh worker imports torch next)
    import torch  # here, not at import: the executor package itself needs no torch

    torch.set_num_threads(max(1, threads))
    return fn(outbox, *args, *inputs)


def drain(queue: Any, on_message: OnMessage, events: list[Event], block: float = 0.0) -> None:
    """Pass every queued message to `on_message` (start marks become Started events); wait up to `block`
    seconds for the first."""
    while True:
        try:
            unit, message = queue.get(timeout=block) if block > 0 else queue.get_nowait()
        except Empty:
            return
        block = 0.0
        if isinstance(message, StartMark):
            events.append(Started(unit, message.node, message.pid))
        else:
            on_message(unit, message)


class ProcessPool(Executor):
    """`workers` spawned processes (spawn: a fork after torch's thread pools start can deadlock)."""

    kind = "local"

    def __init__(self, workers: int, threads: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        self.threads = max(1, cpus // workers) if threads is None else threads
        context = multiprocessing.get_context("spawn")
        self._manager = SyncManager(ctx=context)
        self._manager.start(exit_with_parent)
        self._pool = ProcessPoolExecutor(workers, mp_context=context, initializer=exit_with_parent)
        self._queue = self._manager.Queue()
        self._futures: dict[Future[Any], str] = {}
        self._waiting: list[Unit] = []
        self._results: dict[str, Any] = {}  # finished units' results that a submitted unit still needs
        self._needed: dict[str, int] = {}
        self._finished: set[str] = set()

    def submit(self, unit: Unit) -> None:
        for name in unit.after:
            self._needed[name] = self._needed.get(name, 0) + 1
        if all(name in self._finished for name in unit.after):
            self._launch(unit)
        else:
            self._waiting.append(unit)

    def _launch(self, unit: Unit) -> None:
        inputs = [self._results[name] for name in unit.after]
        for name in unit.after:  # a dependency's result (a trained model) goes once its last user has it
            self._needed[name] -= 1
            if not self._needed[name]:
                del self._results[name]
        future = self._pool.submit(run_in_worker, self._queue, unit.name, unit.fn, self.threads, unit.args, *inputs)
        self._futures[future] = unit.name

    def poll(self, on_message: OnMessage, timeout: float) -> list[Event]:
        events: list[Event] = []
        finished: set[Future[Any]] = set()
        if self._futures:
            finished, _ = wait(self._futures, timeout=timeout, return_when=FIRST_COMPLETED)
        drain(self._queue, on_message, events, 0.0 if finished or not self._futures else 0.2)
        for future in finished:
            name = self._futures.pop(future)
            error = future.exception()
            if error is not None:
                events.append(Failed(name, error))
                continue
            self._finished.add(name)
            if self._needed.get(name):
                self._results[name] = future.result()
            events.append(Finished(name, future.result()))
        if finished:
            ready = [u for u in self._waiting if all(name in self._finished for name in u.after)]
            self._waiting = [u for u in self._waiting if u not in ready]
            for unit in ready:
                self._launch(unit)
        return events

    def cancel_queued(self) -> None:
        self._waiting.clear()
        for future in self._futures:
            future.cancel()  # units not started yet; running ones finish (their pieces are kept)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._manager.shutdown()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(err, Stopped):  # a stop ends the running workers instead of awaiting their units
            workers = list((getattr(self._pool, "_processes", None) or {}).values())  # no public API for this
            self._pool.shutdown(wait=False, cancel_futures=True)
            for process in workers:
                process.terminate()
        self.close()
