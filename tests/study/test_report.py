"""The report is derived from results alone: files, tables, and the summary's reading of the numbers."""

import csv
import json

import pytest

from nonsingular.study.report import headline_rows, summarise, write_report
from nonsingular.study.schema import StudyConfig, load_study_config
from nonsingular.study.verdicts import claim_comparisons
from tests.support.study_results import study_results

GRID = {
    "eps_x": [0.0, 0.05],
    "eps_w": [0.0, 0.002, 0.01],
    "weight_ball": "elementwise",
    "weight_mode": "absolute",
    "scopes": ["per-example", "shared"],
}
SEEDS = [0, 1, 2]


def _model(objective, clean, weight, joint, saturated=0.01):
    """weight, joint: per-seed accuracies at (0, 0.002) and (0.05, 0.002); input-only 0.8; at eps_w = 0.01 the
    attack saturates (`saturated`); the shared scope is 10 points higher."""
    cells = []
    for k, seed in enumerate(SEEDS):
        values = {
            (0.05, 0.0): 0.8,
            (0.0, 0.002): weight[k],
            (0.05, 0.002): joint[k],
            (0.0, 0.01): saturated,
            (0.05, 0.01): saturated,
        }
        for (ex, ew), value in values.items():
            for scope, shift in (("per-example", 0.0), ("shared", 0.1)):
                acc = min(1.0, value + shift)
                cells.append({"seed": seed, "eps_x": ex, "eps_w": ew, "scope": scope, "accuracy": acc, "checked": True})
    certified = [
        {"seed": s, "eps_x": 0.05, "eps_w": 0.002, "method": "ibp", "certified_accuracy": j / 2, "seconds": 0.1}
        for s, j in zip(SEEDS, joint, strict=True)
    ]
    radius = {"k_x": 1.0, "k_w": 0.04, "attack": [0.05, 0.1], "certified": [0.01, 0.02]}
    run = {"clean_accuracy": clean, "train_seconds": 1.0, "eval_seconds": 2.0, "radius": radius}
    return {
        "objective": objective,
        "clean_accuracy": clean,
        "runs": [{"seed": s, **run} for s in SEEDS],
        "cells": cells,
        "certified": certified,
    }


def _results(reg_joint=(0.145, 0.15, 0.14), adv_weight=(0.30, 0.31, 0.29)):
    return {
        "name": "synthetic",
        "data": {"name": "digits", "n_test": 360},
        "n_examples": 360,
        "seeds": SEEDS,
        "attack": "PGD()",
        "grid": GRID,
        "headline": {"eps_x": 0.05, "eps_w": 0.002},
        "versions": {"nonsingular": "0"},
        "models": {
            "std": _model("standard", 0.97, (0.40, 0.42, 0.38), (0.005, 0.004, 0.006)),
            "adv": _model("pgd-at", 0.95, adv_weight, (0.25, 0.26, 0.27)),
            "joint": _model("joint-at", 0.95, (0.6, 0.6, 0.6), (0.5, 0.55, 0.6)),
            "reg": _model("bound-reg", 0.93, (0.5, 0.5, 0.5), reg_joint),
        },
    }


def _verdicts(results):
    return {(c.claim, c.subject, c.reference, c.scope): c for c in claim_comparisons(study_results(results))}


def test_claim_rule_reads_per_seed_differences():
    verdicts = _verdicts(_results())
    one = verdicts[(1, "adv", "std", "per-example")]
    # Saturated eps_w = 0.01 (both below the 5% floor) is excluded; per seed adv - std at eps_w 0.002.
    assert one.cells == [(0.0, 0.002)] and one.excluded == 1
    assert one.per_seed == pytest.approx({0: -0.10, 1: -0.11, 2: -0.09})
    assert one.mean == pytest.approx(-0.10) and one.se == pytest.approx(0.01 / 3**0.5)
    assert one.verdict == "holds"
    # Claim 2 against standard (14.5% vs 0.5%) holds although joint-AT, which is not a reference, is far better.
    two = verdicts[(2, "reg", "std", "per-example")]
    assert two.verdict == "holds" and two.mean == pytest.approx(0.14)
    assert (2, "reg", "joint", "per-example") not in verdicts
    assert verdicts[(2, "reg", "adv", "per-example")].verdict == "does not hold"
    lines = summarise(study_results(_results()))
    assert lines[0].startswith("Claim 1 (elementwise absolute, per-example), adv vs std: holds.")
    assert "seed 0: -10.0, seed 1: -11.0, seed 2: -9.0" in lines[0] and "mean -10.00" in lines[0]


def test_claim_rule_noise_and_one_seed():
    # Signs differ between seeds: within the noise, never decided.
    noisy = _verdicts(_results(adv_weight=(0.35, 0.45, 0.41)))[(1, "adv", "std", "per-example")]
    assert noisy.outcome == "within noise" and noisy.verdict.startswith("not refuted")
    # Same sign in every seed but a mean under two standard errors: within the noise.
    spread = _verdicts(_results(reg_joint=(0.006, 0.30, 0.007)))[(2, "reg", "std", "per-example")]
    assert all(d > 0 for d in spread.per_seed.values()) and spread.outcome == "within noise"
    # One seed has no spread: undecided, with its number still printed.
    results = _results()
    for model in results["models"].values():
        model["cells"] = [c for c in model["cells"] if c["seed"] == 0]
        model["runs"] = model["runs"][:1]
    single = _verdicts(results)[(1, "adv", "std", "per-example")]
    assert single.verdict == "undecided" and single.per_seed == pytest.approx({0: -0.10})


def test_every_model_of_the_objective_is_judged():
    results = _results()
    results["models"]["adv2"] = _model("pgd-at", 0.95, (0.5, 0.5, 0.5), (0.1, 0.1, 0.1))
    verdicts = _verdicts(results)
    assert verdicts[(1, "adv", "std", "shared")].verdict == "holds"
    assert verdicts[(1, "adv2", "std", "shared")].verdict == "does not hold"


def test_headline_rows():
    rows = {r["model"]: r for r in headline_rows(study_results(_results()))}
    assert rows["std"]["weight-only"] == pytest.approx(0.40) and rows["std"]["weight-only sd"] == pytest.approx(0.02)
    assert rows["std"]["joint shared"] == pytest.approx(0.105)
    assert rows["reg"]["certified"] == pytest.approx(0.0725) and rows["reg"]["certified_method"] == "ibp"


def test_write_report(tmp_path):
    html = write_report(study_results(_results()), tmp_path)
    for name in (
        "results.json",
        "headline.csv",
        "robust_accuracy.csv",
        "robust_summary.csv",
        "verdicts.csv",
        "certified.csv",
        "radius.csv",
        "heatmaps.png",
        "weight_fragility.png",
        "input_robustness.png",
        "pareto.png",
        "certified_vs_attacked.png",
        "radius.png",
        "report.md",
        "report.html",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 6 and "Claim 1" in page
    rows = list(csv.DictReader((tmp_path / "robust_accuracy.csv").read_text().splitlines()))
    assert len(rows) == 4 * 3 * 5 * 2  # models x seeds x cells x scopes
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


def test_best_regularized_variant_is_named():
    results = _results()
    results["models"]["reg2"] = _model("bound-reg", 0.9, (0.5, 0.5, 0.5), (0.30, 0.31, 0.29))
    lines = summarise(study_results(results))
    assert lines[-1].startswith("Best regularized variant against standard: 'reg2'") and "+29.50" in lines[-1]
    assert not summarise(study_results(_results()))[-1].startswith("Best regularized variant")


def test_composed_regularizer_is_judged():
    results = _results()
    results["models"]["joint+reg"] = _model("joint-at+bound-reg", 0.95, (0.6, 0.6, 0.6), (0.5, 0.52, 0.48))
    verdicts = _verdicts(results)
    assert verdicts[(2, "joint+reg", "std", "per-example")].verdict == "holds"
    assert (1, "joint+reg", "std", "per-example") not in verdicts
    # ... and against joint-AT alone, its base: the regularizer's own contribution (0, -3, -12 points per seed).
    own = verdicts[(2, "joint+reg", "joint", "per-example")]
    assert own.per_seed == pytest.approx({0: 0.0, 1: -0.03, 2: -0.12}) and own.verdict == "undecided (within noise)"
    assert (2, "reg", "joint", "per-example") not in verdicts


def test_regularizer_selected_on_validation_not_test(tmp_path):
    """The validation split picks the variant claim 2 rests on, even when another is better on the test cells."""
    results = _results()
    results["models"]["reg2"] = _model("bound-reg", 0.9, (0.5, 0.5, 0.5), (0.30, 0.31, 0.29))
    validation = {"reg": (0.40, 0.42, 0.41), "reg2": (0.30, 0.35, 0.33)}
    for name, values in validation.items():
        for run, v in zip(results["models"][name]["runs"], values, strict=True):
            run["validation"] = {"val_clean_acc": 0.9, "val_robust_acc": v}
    lines = summarise(study_results(results))
    assert lines[-2].startswith("Best regularized variant against standard: 'reg2'")  # on the test cells
    chosen = lines[-1]
    assert chosen.startswith("Regularized variant selected on the validation split") and "'reg' at 41.0%" in chosen
    assert "'reg2' 32.7%" in chosen and "vs 'std' (elementwise absolute, per-example): holds (+14.00 points)" in chosen
    write_report(study_results(results), tmp_path)
    rows = list(csv.DictReader((tmp_path / "selection.csv").read_text().splitlines()))
    assert [r["model"] for r in rows] == ["reg", "reg2"] and float(rows[0]["val_joint_robust"]) == pytest.approx(0.41)
    # Without validation numbers there is nothing to select: no line, no file.
    assert not any(line.startswith("Regularized variant selected") for line in summarise(study_results(_results())))
