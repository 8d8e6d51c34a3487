"""Run the `nonsingular` console entry point in-process, as a user's shell would, and capture what it prints."""

from __future__ import annotations

import sys

import pytest


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `nonsingular *args`; returns (exit code, stdout, stderr)."""
    from nonsingular.cli import main

    monkeypatch.setattr(sys, "argv", ["nonsingular", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err
