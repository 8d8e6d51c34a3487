"""`nonsingular certify --release-memory/--keep-memory`: the allocator setting is applied by default and only
then (the setting itself is tested in tests/runtime/test_allocator.py, in fresh processes)."""

from __future__ import annotations

import pytest

from tests.support import run_cli


@pytest.mark.parametrize(("flag", "applied"), [([], 1), (["--release-memory"], 1), (["--keep-memory"], 0)])
def test_the_allocator_setting_follows_the_option(monkeypatch, capsys, checkpoint, flag, applied):
    calls: list[int] = []
    monkeypatch.setattr("nonsingular.cli.certify_cmd.limit_heap_retention", lambda: calls.append(1) or True)
    args = ["certify", "-c", str(checkpoint), "--eps-x", "0.01", "--method", "ibp", "--steps", "0"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--n-examples", "4", *flag)
    assert code == 0, err
    assert len(calls) == applied
