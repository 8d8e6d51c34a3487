"""Executors: where the units of a grid run (this process, a local process pool, a Ray cluster).

`run_units` drives any `Executor` the same way (submit the units, collect their messages and results as they
finish); the study and the verification campaign plan units and record results, never knowing which executor
runs them. Part of `runtime`: imports only `errors` (and Ray, lazily, for the Ray executor).
"""

from __future__ import annotations

from enum import Enum

from .base import (
    Event,
    Executor,
    Failed,
    Finished,
    OnMessage,
    Outbox,
    ProgressLine,
    Resources,
    Started,
    Unit,
    UnitError,
    UnitProgress,
    report_units,
    run_units,
)
from .inline import InlineExecutor
from .local import ProcessPool, exit_with_parent

__all__ = [
    "Event",
    "Executor",
    "ExecutorKind",
    "Failed",
    "Finished",
    "InlineExecutor",
    "OnMessage",
    "Outbox",
    "ProcessPool",
    "ProgressLine",
    "Resources",
    "Started",
    "Unit",
    "UnitError",
    "UnitProgress",
    "exit_with_parent",
    "make_executor",
    "report_units",
    "run_units",
]


class ExecutorKind(str, Enum):
    """Where units run: "local" (this process, or `workers` processes) or "ray" (a Ray cluster)."""

    LOCAL = "local"
    RAY = "ray"


def make_executor(
    kind: ExecutorKind | str = ExecutorKind.LOCAL, workers: int = 1, address: str | None = None
) -> Executor:
    """The executor of `kind`: local with `workers` processes (1: this process), or Ray at `address` (see
    RayExecutor).

    Raises:
        InputError: an unknown kind, workers < 1, an address without Ray, Ray not installed or not reachable.
    """
    from ...errors import InputError

    try:
        kind = ExecutorKind(kind)
    except ValueError:
        raise InputError(f"unknown executor {kind!r}: choose local or ray") from None
    if kind is ExecutorKind.RAY:
        from .ray_executor import RayExecutor

        return RayExecutor(address)
    if address is not None:
        raise InputError("--ray-address needs --executor ray")
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    return InlineExecutor() if workers == 1 else ProcessPool(workers)
