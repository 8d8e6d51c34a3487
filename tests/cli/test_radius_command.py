import json

from tests.support import run_cli


def test_radius_command(monkeypatch, capsys, checkpoint, tmp_path):
    out = tmp_path / "radius.json"
    code, stdout, err = run_cli(
        monkeypatch,
        capsys,
        "radius",
        "-c",
        str(checkpoint),
        "--n-examples",
        "10",
        "--iterations",
        "5",
        "--steps",
        "5",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "certified <= attacked for every example: True" in stdout
    data = json.loads(out.read_text())
    assert len(data["attacked"]) == 10
    assert all(c <= a + 1e-12 for a, c in zip(data["attacked"], data["certified"], strict=True))


def test_radius_bad_direction(monkeypatch, capsys, checkpoint):
    code, _, err = run_cli(monkeypatch, capsys, "radius", "-c", str(checkpoint), "--k-x", "0", "--k-w", "0")
    assert code == 2 and "ray direction" in err and len(err.strip().splitlines()) == 1
