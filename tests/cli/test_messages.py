"""What the command line prints is what the code does: help shows the real defaults (brackets included), paths
with markup characters are printed literally, and Ctrl-C ends with one line and exit status 130."""

from __future__ import annotations

from nonsingular.training import Trainer
from tests.support import run_cli


def test_help_shows_defaults_and_brackets(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "train", "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert "[default: 20]" in flat and "[default: standard]" in flat and "[default: auto]" in flat
    code, out, _ = run_cli(monkeypatch, capsys, "evaluate", "--help")
    assert "[default 2.5/steps]" in " ".join(out.split())
    code, out, _ = run_cli(monkeypatch, capsys, "study", "--help")
    assert "study.toml" in out


def test_paths_with_brackets_are_printed_literally(monkeypatch, capsys, checkpoint, tmp_path):
    missing = tmp_path / "[old]" / "m.safetensors"
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", "-c", str(missing))
    assert code == 2 and str(missing) in err
    out = tmp_path / "br" / "m[/x].json"
    args = ["radius", "-c", str(checkpoint), "--n-examples", "4", "--iterations", "2", "--steps", "2", "-o", str(out)]
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert out.is_file()
    assert f"wrote {out}" in stdout
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", "-c", str(checkpoint), "--eps-x", "nan")
    assert code == 2 and "nan" in err


def test_ctrl_c_says_interrupted(monkeypatch, capsys, tmp_path):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    out = tmp_path / "m.safetensors"
    code, _, err = run_cli(monkeypatch, capsys, "train", "--out", str(out), "--device", "cpu", "-q")
    assert code == 130 and err.strip() == "error: interrupted"
