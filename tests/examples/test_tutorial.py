"""The first-hour tutorial's script (examples/tutorial.py) runs end to end on tiny settings."""

import importlib.util
import json
from pathlib import Path

import tomllib
import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _tutorial():
    spec = importlib.util.spec_from_file_location("tutorial", EXAMPLES / "tutorial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tutorial_script(tmp_path, capsys):
    # The tutorial's own study file with smaller numbers: the file the page uses must stay valid.
    study = tomllib.loads((EXAMPLES / "tutorial_study.toml").read_text())
    study.update(
        n_examples=30,
        training={"epochs": 1, "n_train": 200},
        attack={"steps": 2},
        radius={"n_examples": 3, "iterations": 2},
    )
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(study))

    report = _tutorial().run(tmp_path / "out", epochs=1, n_examples=30, steps=2, study=tiny)

    printed = capsys.readouterr().out
    for command in ("--version", "train", "evaluate", "certify", "study"):
        assert f"$ nonsingular {command}" in printed
    assert "joint threat:" in printed and "joint per-example" in printed
    for name in ("standard", "joint"):
        evaluation = json.loads((tmp_path / "out" / f"{name}-eval.json").read_text())
        assert evaluation["n_examples"] == 30
        for kind in ("input", "weight", "joint"):
            for scope in ("per-example", "shared"):
                cell = evaluation["cells"][kind][scope]
                assert cell["checked"] and 0 <= cell["accuracy"] <= evaluation["clean_accuracy"]
        assert (tmp_path / "out" / f"{name}-certify.json").stat().st_size > 0
    results = json.loads((report.parent / "results.json").read_text())
    assert list(results["models"]) == [m["name"] for m in study["models"]]
    assert report.stat().st_size > 0
