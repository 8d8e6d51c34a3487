"""The study's typed records round-trip through the JSON results.json holds, key for key and in its order."""

from __future__ import annotations

import json

import pytest

from nonsingular.attacks.sanity import SanityFlag
from nonsingular.study.records import ModelResult, SeedRun, StudyResults, UnitResult


def _run(seed: int, clean: float) -> SeedRun:
    return SeedRun(seed, clean, 1.5, seed == 1, "c.safetensors" if seed == 1 else None, 2.5, {"seconds": 1.5},
                   None, {"attack": [0.1]}, None, None)  # fmt: skip


def _results() -> StudyResults:
    flag = SanityFlag("nested", ["m: shared eps_x=0.1 eps_w=0"], "robust accuracy rises", {"pairs": [["a", "b"]]})
    units = [
        UnitResult(_run(0, 0.5), [{"seed": 0, "accuracy": 0.25}], {"operator relative": [{"seed": 0}]}, [], [flag]),
        UnitResult(_run(1, 1.0), [{"seed": 1, "accuracy": 0.75}], {"operator relative": [{"seed": 1}]}, [], []),
    ]
    model = ModelResult.of_units("standard", {"epochs": 1}, units)
    return StudyResults(
        name="s", config={"name": "s"}, data={"name": "digits"}, n_examples=4, seeds=[0, 1], attack="PGD()",
        headline_attack=None, attack_budget={"steps": 2}, grid={"eps_x": [0.1]}, headline={"eps_x": 0.1},
        models={"m": model}, seconds=3.0, versions={"nonsingular": "0"},
    )  # fmt: skip


def test_model_record_joins_its_seeds():
    model = _results().models["m"]
    assert model.clean_accuracy == 0.75 and [r.seed for r in model.runs] == [0, 1]
    assert [c["seed"] for c in model.cells] == [0, 1]
    assert model.extra_cells == {"operator relative": [{"seed": 0}, {"seed": 1}]}
    assert [f.check for f in model.flags] == ["nested"]


def test_results_round_trip_in_results_json_order():
    results = _results()
    data = json.loads(json.dumps(results.to_json()))
    assert list(data) == [
        "schema", "name", "config", "data", "n_examples", "seeds", "attack", "headline_attack", "attack_budget",
        "grid", "headline", "models", "seconds", "versions",
    ]  # fmt: skip
    assert list(data["models"]["m"]) == [
        "objective", "options", "clean_accuracy", "runs", "cells", "extra_cells", "certified", "flags",
    ]  # fmt: skip
    assert list(data["models"]["m"]["runs"][0]) == [
        "seed", "clean_accuracy", "train_seconds", "cached", "cache_file", "eval_seconds", "training",
        "validation", "radius", "scale", "quantization",
    ]  # fmt: skip
    report_added = {**data, "summary": ["..."], "verdicts": []}
    assert StudyResults.from_json(report_added) == results


def test_from_json_refuses_other_records():
    data = _results().to_json()
    with pytest.raises(ValueError, match="schema"):
        StudyResults.from_json({**data, "schema": "nonsingular.study/1"})
    broken = {**data, "models": {"m": {**data["models"]["m"], "runs": [{"seed": 0}]}}}
    with pytest.raises(ValueError, match="not a SeedRun record"):
        StudyResults.from_json(broken)
