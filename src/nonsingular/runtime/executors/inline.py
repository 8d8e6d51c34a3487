"""The executor that runs units one after another in this process: the default, and what torchrun ranks use.

A unit's messages reach the driver the moment they are sent (its pieces are recorded as it goes, as if no
executor stood between), and an exception leaves `poll` unchanged, with its traceback.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from typing import Any

from .base import Event, Executor, Finished, OnMessage, Started, Unit

__all__ = ["InlineExecutor"]


class _Direct:
    def __init__(self, unit: str, on_message: OnMessage) -> None:
        self.unit, self.on_message = unit, on_message

    def send(self, message: Any) -> None:
        self.on_message(self.unit, message)


class InlineExecutor(Executor):
    """Runs each unit in this process, in submission order, when polled."""

    kind = "inline"

    def __init__(self) -> None:
        self._queue: deque[Unit] = deque()
        self._results: dict[str, Any] = {}
        self._needed: dict[str, int] = {}

    def submit(self, unit: Unit) -> None:
        self._queue.append(unit)
        for name in unit.after:
            self._needed[name] = self._needed.get(name, 0) + 1

    def poll(self, on_message: OnMessage, timeout: float) -> list[Event]:
        if not self._queue:
            return []
        unit = self._queue.popleft()
        inputs = [self._results[name] for name in unit.after]
        for name in unit.after:  # let a dependency's result (a trained model) go once its last user has it
            self._needed[name] -= 1
            if not self._needed[name]:
                del self._results[name]
        started = Started(unit.name, socket.gethostname(), os.getpid())
        result = unit.fn(_Direct(unit.name, on_message), *unit.args, *inputs)
        if self._needed.get(unit.name):
            self._results[unit.name] = result
        return [started, Finished(unit.name, result)]

    def cancel_queued(self) -> None:
        self._queue.clear()
