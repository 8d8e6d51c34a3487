"""Helpers the tests share (imported as `tests.support`; pytest fixtures stay in the conftest.py files).

The modules here are plain code: a tiny model trainer, the in-process CLI runner, reference attacks, the points
of the threat set that bounds are checked against, random graphs, writers of data files, and the scripts that
multi-process tests launch by path (`script`). Test files import them; they never import test files.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.cli import run_cli
from tests.support.models import train_mlp

#: tests/data: stored references and sample files the tests read.
DATA = Path(__file__).resolve().parents[1] / "data"


def script(name: str) -> Path:
    """The path of a helper script in this folder that a test runs in its own process (e.g. under torchrun)."""
    path = Path(__file__).resolve().with_name(name)
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


__all__ = ["DATA", "run_cli", "script", "train_mlp"]
