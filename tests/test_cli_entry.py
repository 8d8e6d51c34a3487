"""What users try first on the command line: the version, and shell completion."""

from conftest import run_cli
from nonsingular import __version__


def test_version(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"nonsingular {__version__}"


def test_completion_script_and_answers(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "--show-completion", "bash")
    assert code == 0 and "complete -o default -F _nonsingular_completion nonsingular" in out
    # What bash asks the program when the user presses tab after `nonsingular ce` and `nonsingular certify --me`.
    monkeypatch.setenv("_NONSINGULAR_COMPLETE", "complete_bash")
    for words, cword, expected in (("nonsingular ce", "1", "certify"), ("nonsingular certify --me", "2", "--method")):
        monkeypatch.setenv("COMP_WORDS", words)
        monkeypatch.setenv("COMP_CWORD", cword)
        code, out, _ = run_cli(monkeypatch, capsys)
        assert code == 0 and out.split() == [expected]
