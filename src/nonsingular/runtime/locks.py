"""Locks that keep two runs from writing the same thing: a study's output folder, a training run's checkpoint, a
cache entry being trained.

A lock is a file created with O_CREAT | O_EXCL, holding who holds it (pid, host, start time, command). Why not
fcntl/flock advisory locks: they are tied to an open file description, silently not shared between hosts on
some network file systems (NFSv3 without lockd, several FUSE and parallel file systems map them to local-only
locks), and released by any close() of the file in the holding process. Exclusive creation is atomic on local
file systems and on NFSv3 and later, and the lock file says who holds it, which makes the "someone else is
writing this" message useful and stale locks detectable:
- same host and the holder's pid is gone: stale (a killed run), broken at once;
- otherwise the holder refreshes the file's modification time every `heartbeat_s`; a lock not refreshed for
  `stale_s` (a host that died) is stale.
Breaking a stale lock goes through a second exclusive file (`<lock>.break`), so two waiters that find the same
stale lock cannot both break it and then remove each other's fresh lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import InputError
from .files import process_alive

__all__ = ["DEFAULT_STALE_S", "FileLock", "LockedError"]

log = logging.getLogger(__name__)

#: A lock whose holder has not refreshed it for this long (seconds) is stale, whatever host holds it.
DEFAULT_STALE_S = 600.0
#: The holder refreshes its lock this often (seconds).
DEFAULT_HEARTBEAT_S = 30.0
#: A `.break` file older than this (seconds) was left by a waiter that died while breaking a stale lock.
_BREAK_STALE_S = 60.0


class LockedError(InputError):
    """Another live run holds the lock (the message names it and what to do)."""


class FileLock:
    """An exclusive lock on `what`, held as the file `path` (see the module docstring).

    Args:
        path: the lock file (e.g. `<out>/.lock`); its folder must exist or be creatable.
        what: what the lock protects, for messages ("study output folder runs/x").
        wait: seconds to wait for a live holder (0: refuse at once; None: wait as long as it takes).
        stale_s: a lock not refreshed for this long is stale.
        heartbeat_s: how often the holder refreshes its lock.
        poll_s: how often a waiter looks again.
    """

    def __init__(
        self,
        path: str | Path,
        what: str,
        *,
        wait: float | None = 0.0,
        stale_s: float = DEFAULT_STALE_S,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        poll_s: float = 0.2,
    ) -> None:
        self.path, self.what, self.wait = Path(path), what, wait
        self.stale_s, self.heartbeat_s, self.poll_s = stale_s, heartbeat_s, poll_s
        self._held = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ holder info
    def _record(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), "command": sys.argv[:6]}

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock (the file's JSON, plus its age in seconds), or None when it is free."""
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError:
            return {"age": 0.0}
        try:
            info = json.loads(text)
        except ValueError:  # being written right now, or garbage: judge it by its age alone
            info = {}
        return {**(info if isinstance(info, dict) else {}), "age": age}

    def _stale(self, info: dict[str, Any]) -> bool:
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
            return not process_alive(info["pid"])
        return float(info.get("age", 0.0)) > self.stale_s

    def _describe(self, info: dict[str, Any]) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(info["time"])) if "time" in info else "?"
        return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {since}"

    # ------------------------------------------------------------------------------------------ acquire/release
    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump(self._record(), fh)
        return True

    def _break(self, info: dict[str, Any]) -> None:
        """Remove the stale lock described by `info`, unless someone replaced it meanwhile."""
        breaker = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - breaker.stat().st_mtime > _BREAK_STALE_S:
                    breaker.unlink()
            except FileNotFoundError:
                pass
            return
        os.close(fd)
        try:
            now = self.holder()
            if now is not None and now.get("pid") == info.get("pid") and now.get("time") == info.get("time"):
                log.warning("removing the stale lock of %s (%s)", self.what, self._describe(info))
                self.path.unlink(missing_ok=True)
        finally:
            breaker.unlink(missing_ok=True)

    def acquire(self) -> None:
        """Take the lock, waiting up to `wait` seconds for a live holder.

        Raises:
            LockedError: a live holder kept it past `wait`.
            InputError: the lock file cannot be created (its folder refuses files).
        """
        start, told = time.monotonic(), False
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if self._try_create():
                    break
            except OSError as err:  # the folder cannot be made or refuses files: the user's path
                raise InputError(f"cannot write {self.path} (the lock of {self.what}): {err.strerror or err}") from None
            info = self.holder()
            if info is None:
                continue  # released between our attempt and the look
            if self._stale(info):
                self._break(info)
                continue
            if self.wait is not None and time.monotonic() - start >= self.wait:
                raise LockedError(
                    f"{self.what} is in use by another run ({self._describe(info)}); wait for it to finish, or "
                    f"remove {self.path} if that run is gone"
                )
            if not told:
                log.info("waiting for %s, held by %s", self.what, self._describe(info))
                told = True
            time.sleep(self.poll_s)
        self._held = True
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock {self.path.name}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:  # removed by someone who judged it stale: nothing more to refresh
                return

    def release(self) -> None:
        """Give the lock up (only if this object holds it)."""
        if not self._held:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        info = self.holder()
        if info is not None and info.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self._held = False

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
