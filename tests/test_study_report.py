"""The report is derived from results alone: files, tables, and the summary's reading of the numbers."""

import csv
import json

import pytest

from nonsingular.study.config import StudyConfig, load_study_config
from nonsingular.study.report import headline_rows, summarise, write_report

GRID = {
    "eps_x": [0.0, 0.05],
    "eps_w": [0.0, 0.002],
    "weight_ball": "elementwise",
    "weight_mode": "absolute",
    "scopes": ["per-example", "shared"],
}


def _model(objective, clean, acc):
    """acc: (input-only, weight-only, joint) accuracies; shared scope 10 points higher."""
    cells = []
    for (ex, ew), value in zip([(0.05, 0.0), (0.0, 0.002), (0.05, 0.002)], acc, strict=True):
        cells.append({"eps_x": ex, "eps_w": ew, "scope": "per-example", "accuracy": value, "verified": True})
        cells.append({"eps_x": ex, "eps_w": ew, "scope": "shared", "accuracy": min(1, value + 0.1), "verified": True})
    certified = [{"eps_x": 0.05, "eps_w": 0.002, "method": "ibp", "certified_accuracy": acc[2] / 2, "seconds": 0.1}]
    return {
        "objective": objective,
        "clean_accuracy": clean,
        "cells": cells,
        "certified": certified,
        "train_seconds": 1.0,
        "eval_seconds": 2.0,
        "radius": {"k_x": 1.0, "k_w": 0.04, "attack": [0.05, 0.1], "certified": [0.01, 0.02]},
    }


def _results(reg_joint):
    return {
        "name": "synthetic",
        "data": {"name": "digits", "n_test": 360},
        "n_examples": 360,
        "attack": "PGD()",
        "grid": GRID,
        "headline": {"eps_x": 0.05, "eps_w": 0.002},
        "versions": {"nonsingular": "0"},
        "models": {
            "std": _model("standard", 0.97, (0.80, 0.40, 0.10)),
            "adv": _model("pgd-at", 0.95, (0.90, 0.30, 0.15)),
            "reg": _model("bound-reg", 0.93, (0.85, 0.60, reg_joint)),
        },
    }


def test_summary_reads_the_numbers():
    lines = summarise(_results(0.45))
    assert lines[0].startswith("Claim 1 (holds here)") and "30.0%" in lines[0] and "40.0%" in lines[0]
    assert lines[1].startswith("Claim 2 (holds here)") and "45.0%" in lines[1] and "4.0%" in lines[1]
    assert summarise(_results(0.05))[1].startswith("Claim 2 (does not hold here)")


def test_headline_rows():
    rows = {r["model"]: r for r in headline_rows(_results(0.45))}
    assert rows["std"]["weight-only"] == 0.40 and rows["std"]["joint shared"] == pytest.approx(0.2)
    assert rows["reg"]["certified"] == pytest.approx(0.225) and rows["reg"]["certified_method"] == "ibp"


def test_write_report(tmp_path):
    html = write_report(_results(0.45), tmp_path)
    for name in (
        "results.json",
        "headline.csv",
        "robust_accuracy.csv",
        "certified.csv",
        "radius.csv",
        "heatmaps.png",
        "weight_fragility.png",
        "input_robustness.png",
        "certified_vs_attacked.png",
        "radius.png",
        "report.md",
        "report.html",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 5 and "Claim 1" in page
    rows = list(csv.DictReader((tmp_path / "robust_accuracy.csv").read_text().splitlines()))
    assert len(rows) == 18
    assert json.loads((tmp_path / "results.json").read_text())["summary"][0].startswith("Claim 1")


def test_default_config_and_errors(tmp_path):
    cfg = load_study_config(None)
    assert {m.objective for m in cfg.models} >= {"standard", "pgd-at", "awp", "joint-at", "bound-reg"}
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nunknown_key = 1\n')
    with pytest.raises(ValueError, match="unknown_key"):
        load_study_config(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_study_config(tmp_path / "absent.toml")
    with pytest.raises(ValueError, match="headline"):
        StudyConfig(headline={"eps_x": 0.3, "eps_w": 0.0})
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_study_config(broken)
