"""Atomic writes leave no temporaries of dead writers behind, spare those of live ones, and give the file the
permissions the umask asks for (not the temporary file's 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nonsingular.runtime import atomic_write


def test_atomic_write_removes_stale_temporaries_and_honours_the_umask(tmp_path):
    target = tmp_path / "r.json"
    dead = tmp_path / ".r.json.999999999.abcd.tmp"  # a writer that was killed (no such pid)
    live = tmp_path / f".r.json.{os.getpid()}.efgh.tmp"  # a writer still running
    other = tmp_path / ".s.json.999999999.abcd.tmp"  # another file's temporary
    for path in (dead, live, other):
        path.write_text("partial")
    old = os.umask(0o027)
    try:
        atomic_write(target, lambda tmp: Path(tmp).write_text("{}"))
    finally:
        os.umask(old)
    assert target.read_text() == "{}"
    assert not dead.exists() and live.exists() and other.exists()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    old = os.umask(0o022)
    try:
        atomic_write(target, lambda tmp: Path(tmp).write_text("{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
