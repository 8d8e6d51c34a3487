"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM (a scheduler's stop) become a stop request that long runs honour
between units of work, so that every finished unit is kept and nothing is left half-written.

    with stop_on_signals():          # installs the handlers, restores the previous ones on exit
        for unit in units:
            run(unit)                # writes its result atomically
            check_stop()             # raises Stopped here if a signal arrived

Why a request rather than an immediate exception: a unit that is about to finish (an epoch, a grid point) is
worth finishing, and the places between units are where a run's files are consistent with each other. Why a
deadline too: a unit may take minutes, and a user or a scheduler expects a stop within seconds. So the first
signal sets the request and arms a timer; if no `check_stop` honours it within `grace_s` seconds, the timer raises
`Stopped` wherever the run is (every file is written atomically, runtime/files.py, so even then nothing is
half-done). A second signal raises at once.

`Stopped` derives from BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows
it; the CLI turns it into one line and exit status 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
Handlers can only be installed in the main thread; elsewhere (or under another handler's control) the context
manager does nothing and `check_stop` never raises.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["DEFAULT_GRACE_S", "Stopped", "check_stop", "stop_on_signals", "stop_requested"]

#: Seconds a stop request waits for the next `check_stop` before it is raised wherever the run is.
DEFAULT_GRACE_S = 3.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """A run stopped on a signal. `note` (set by whoever knows) says what was kept and how to resume."""

    def __init__(self, signum: int, note: str = "") -> None:
        super().__init__(signum)
        self.signum = signum
        self.note = note

    @property
    def name(self) -> str:
        """The signal's name, e.g. 'SIGTERM'."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal (130, 143)."""
        return 128 + self.signum

    def __str__(self) -> str:
        return self.note or f"stopped by {self.name}"


class _Request:
    """The pending stop request of the (single) active `stop_on_signals` block."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.active = False


_REQUEST = _Request()


def stop_requested() -> bool:
    """Whether a stop signal arrived inside the active `stop_on_signals` block."""
    return _REQUEST.signum is not None


def check_stop() -> None:
    """Raise Stopped if a stop signal arrived: call it between units of work (after a unit's result is saved)."""
    if _REQUEST.signum is not None:
        signum, _REQUEST.signum = _REQUEST.signum, None
        signal.setitimer(signal.ITIMER_REAL, 0)
        raise Stopped(signum)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _REQUEST.signum is not None:  # a second signal: the user means now
        check_stop()
    _REQUEST.signum = signum
    if _GRACE[0] <= 0:
        check_stop()
    signal.setitimer(signal.ITIMER_REAL, _GRACE[0])


def _on_deadline(signum: int, frame: FrameType | None) -> None:
    check_stop()


_GRACE = [DEFAULT_GRACE_S]


@contextmanager
def stop_on_signals(grace_s: float = DEFAULT_GRACE_S) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into a stop request for the duration of the block (see the module docstring).

    Args:
        grace_s: seconds a request waits for a `check_stop` before it is raised wherever the run is; 0 raises at
            once (for runs that keep nothing until they finish).

    Raises:
        Stopped: from the block, where the request is honoured.
    """
    if threading.current_thread() is not threading.main_thread() or _REQUEST.active:
        yield  # handlers belong to the main thread; a nested block shares the outer one's
        return
    previous: dict[signal.Signals, Any] = {s: signal.getsignal(s) for s in (*_SIGNALS, signal.SIGALRM)}
    _REQUEST.active, _REQUEST.signum, _GRACE[0] = True, None, grace_s
    try:
        for s in _SIGNALS:
            signal.signal(s, _on_signal)
        signal.signal(signal.SIGALRM, _on_deadline)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, handler in previous.items():
            signal.signal(s, handler)
        _REQUEST.active, _REQUEST.signum = False, None
