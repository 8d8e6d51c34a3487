"""What users try first on the command line: the version, and shell completion."""

from nonsingular import __version__
from tests.support import run_cli


def test_version(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"nonsingular {__version__}"


def test_completion_options_and_answers(monkeypatch, capsys):
    # The options exist (their shell detection is typer's: under make the parent shell is sh, which it refuses).
    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert code == 0 and "--install-completion" in out and "--show-completion" in out
    # What bash asks the program when the user presses tab after `nonsingular ce` and `nonsingular certify --me`.
    monkeypatch.setenv("_NONSINGULAR_COMPLETE", "complete_bash")
    for words, cword, expected in (("nonsingular ce", "1", "certify"), ("nonsingular certify --me", "2", "--method")):
        monkeypatch.setenv("COMP_WORDS", words)
        monkeypatch.setenv("COMP_CWORD", cword)
        code, out, _ = run_cli(monkeypatch, capsys)
        assert code == 0 and out.split() == [expected]
