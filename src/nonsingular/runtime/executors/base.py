"""The executor interface: hand units of work to someone, hear about them as they start and finish.

A grid of work (a study's (model, seed) units, a verification campaign's instances) is a list of `Unit`s, each a
picklable function with its arguments, the names of the units whose results it needs, and the resources it
declares. An `Executor` runs them (in this process, in a process pool, on a Ray cluster) and `run_units` drives
any of them the same way: submit everything, then collect events until every unit has finished, passing the
units' messages (pieces of results, progress ticks) to the caller as they arrive. concurrent.futures' Executor
is the model; the differences are the dependencies (a unit's inputs are other units' results) and the message
channel from a running unit back to the driver, which is what lets results stream into a resumable cache.
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from ...errors import InputError, NonFiniteError, describe

__all__ = [
    "Event",
    "Executor",
    "Failed",
    "Finished",
    "OnMessage",
    "Outbox",
    "ProgressLine",
    "Resources",
    "Started",
    "Unit",
    "UnitError",
    "UnitProgress",
    "report_units",
    "run_units",
]


class UnitError(RuntimeError):
    """A unit raised where it ran: the message names the unit, the node and the worker's one-line error."""


@dataclass(frozen=True)
class Resources:
    """What one unit needs while it runs, for schedulers that place units by resources (Ray).

    Attributes:
        cpus: CPU cores (also the unit's torch threads where the executor sets them).
        gpus: GPUs (1 when the unit's device is CUDA).
        memory: bytes of memory the unit is expected to use at most (0: not declared).
    """

    cpus: float = 1.0
    gpus: float = 0.0
    memory: int = 0


@dataclass(frozen=True)
class Unit:
    """One piece of work.

    Attributes:
        name: unique within a run; errors and progress name the unit by it.
        fn: a module-level function (so that it pickles by reference), called as
            `fn(outbox, *args, *results_of_after)` where it runs.
        args: picklable arguments.
        after: names of units submitted earlier whose results are appended to `args`, in this order; the unit
            starts only when they have finished.
        resources: what the unit declares to a scheduler.
    """

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    after: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)


class Outbox(Protocol):
    """A running unit's channel back to the driver: every message reaches the driver's `on_message`, in order."""

    def send(self, message: Any) -> None: ...


#: on_message(unit name, message), called in the driver's process for every message a unit sends.
OnMessage = Callable[[str, Any], None]


@dataclass(frozen=True)
class Started:
    """A unit began to run (again, after a retry) on `node`, in process `pid`."""

    unit: str
    node: str
    pid: int


@dataclass(frozen=True)
class Finished:
    """A unit returned `result`."""

    unit: str
    result: Any


@dataclass(frozen=True)
class Failed:
    """A unit raised `error` where it ran (retries, if any, are spent)."""

    unit: str
    error: BaseException


Event = Started | Finished | Failed


@dataclass(frozen=True)
class StartMark:
    """The first message of every unit that runs outside the driver: where it runs (becomes a `Started`)."""

    node: str
    pid: int

    @classmethod
    def here(cls) -> StartMark:
        return cls(socket.gethostname(), os.getpid())


class Executor(ABC):
    """Runs submitted units; `run_units` is its one client loop.

    An implementation runs a unit only after the units named in its `after` have finished, passes their results
    to it, and reports every unit's start, its messages and its end through `poll`.
    """

    #: Name of the executor ("inline", "local", "ray") for messages and logs.
    kind: str = ""
    #: Whether the executor gives each unit its own device (Ray sets CUDA_VISIBLE_DEVICES per task): units then
    #: address "cuda", never "cuda:N".
    assigns_devices: bool = False

    @abstractmethod
    def submit(self, unit: Unit) -> None:
        """Queue `unit`; every unit of its `after` must have been submitted before."""

    @abstractmethod
    def poll(self, on_message: OnMessage, timeout: float) -> list[Event]:
        """Wait up to `timeout` seconds for events; pass every message that arrived to `on_message` first (a
        unit's messages reach the driver before its `Finished`)."""

    def cancel_queued(self) -> None:  # noqa: B027 (an optional hook: executors that queue nothing keep it)
        """Drop the units that have not started (a unit failed and the run stops)."""

    def close(self) -> None:  # noqa: B027
        """Release processes, connections and clusters this executor started."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


@dataclass
class UnitProgress:
    """Counts of a run's units for the progress line: done / running / queued (per node when on several)."""

    total: int
    done: int = 0
    running: dict[str, str] = field(default_factory=dict)  # unit -> node
    started: set[str] = field(default_factory=set)
    restarts: int = 0  # units that started again (their worker died; the executor ran them anew)

    def start(self, unit: str, node: str) -> None:
        if unit in self.started:
            self.restarts += 1
        self.started.add(unit)
        self.running[unit] = node

    @property
    def queued(self) -> int:
        return self.total - self.done - len(self.running)

    def label(self) -> str:
        """'units (2 running, 3 queued)', with restarts if any and the running units per node when they run on
        several."""
        nodes: dict[str, int] = {}
        for node in self.running.values():
            nodes[node] = nodes.get(node, 0) + 1
        where = ""
        if len(nodes) > 1:
            where = "; " + ", ".join(f"{node}: {count}" for node, count in sorted(nodes.items()))
        again = f", {self.restarts} restarted" if self.restarts else ""
        return f"units ({len(self.running)} running, {self.queued} queued{again}{where})"


#: progress(label, done, total): where the study and the campaign report their lines (the CLI prints them as
#: plain lines in a log, as a bar on a terminal).
ProgressLine = Callable[[str, int, int], None]


def report_units(progress: ProgressLine) -> Callable[[UnitProgress], None]:
    """An `on_progress` for `run_units` that reports the unit counts as one progress line, the same for every
    grid of units: progress('units (1 running, 2 queued; node-a: 1)', done, total)."""

    def on_progress(counts: UnitProgress) -> None:
        progress(counts.label(), counts.done, counts.total)

    return on_progress


def unit_error(unit: str, node: str | None, error: BaseException) -> Exception:
    """The driver-side error for a unit that raised on a worker: the user's errors keep their type (the CLI
    prints them as one line), anything else becomes a UnitError; both name the unit and the worker's error."""
    where = f" on {node}" if node else ""
    if isinstance(error, InputError | NonFiniteError):
        return type(error)(f"unit '{unit}'{where}: {describe(error)}")
    return UnitError(f"unit '{unit}' failed{where}: {type(error).__name__}: {describe(error)}")


def run_units(
    executor: Executor,
    units: Sequence[Unit],
    on_message: OnMessage,
    on_result: Callable[[str, Any], None] | None = None,
    on_progress: Callable[[UnitProgress], None] | None = None,
    between: Callable[[], None] | None = None,
    keep: Callable[[str], bool] | None = None,
    poll_seconds: float = 0.5,
) -> dict[str, Any]:
    """Run `units` on `executor`; returns the results by unit name (of the units `keep` accepts; default all).

    Args:
        on_message: every message of every unit, in the order each unit sent them, as they arrive.
        on_result: on_result(name, result) as each unit finishes (before any unit that needs it can start in
            this process).
        on_progress: called with the unit counts whenever a unit starts or finishes.
        between: called between events (after each poll): the place to honour a stop request; whatever it
            raises stops the run.
        keep: which units' results to return (the others, e.g. trained models that later units consumed, are
            let go as soon as `on_result` has seen them).

    Raises:
        InputError, NonFiniteError, UnitError: a unit raised (named, with where it ran and its one-line error);
            units not started yet are dropped.
    """
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise ValueError("unit names must be unique")
    seen: set[str] = set()
    for unit in units:
        missing = [a for a in unit.after if a not in seen]
        if missing:
            raise ValueError(f"unit '{unit.name}' needs {missing}, which are not submitted before it")
        seen.add(unit.name)
    progress = UnitProgress(len(units))
    results: dict[str, Any] = {}
    for unit in units:
        executor.submit(unit)
    finished = 0
    while finished < len(units):
        events = executor.poll(on_message, poll_seconds)
        for event in events:
            if isinstance(event, Started):
                progress.start(event.unit, event.node)
            elif isinstance(event, Finished):
                progress.running.pop(event.unit, None)
                if keep is None or keep(event.unit):
                    results[event.unit] = event.result
                finished += 1
                progress.done += 1
                if on_result is not None:
                    on_result(event.unit, event.result)
            else:
                executor.cancel_queued()
                raise unit_error(event.unit, progress.running.get(event.unit), event.error) from event.error
        if events and on_progress is not None:
            on_progress(progress)
        if between is not None:
            between()
    return results
