"""Typed study results from the few fields a test cares about.

The report, the verdicts and the plots read `StudyResults` (nonsingular.study.records). A test states only the
numbers it checks (a model's objective, cells, runs...) as results.json would hold them; `study_results` fills
every other field with a neutral value (no validation, no radius, no scale or quantization section, zero
timings) and converts through `StudyResults.from_json`, the same boundary a report rebuilt from results.json
crosses, so a field a record lacks or misnames fails here rather than passing silently.
"""

from __future__ import annotations

from typing import Any

from nonsingular.study.records import SCHEMA, StudyResults

__all__ = ["study_results"]

_RUN: dict[str, Any] = {
    "seed": 0,
    "clean_accuracy": 0.0,
    "train_seconds": 0.0,
    "cached": False,
    "cache_file": None,
    "eval_seconds": 0.0,
    "training": {},
    "validation": None,
    "radius": None,
    "scale": None,
    "quantization": None,
}

_MODEL: dict[str, Any] = {
    "objective": "standard",
    "options": {},
    "clean_accuracy": 0.0,
    "runs": [],
    "cells": [],
    "extra_cells": {},
    "certified": [],
    "flags": [],
}

_STUDY: dict[str, Any] = {
    "schema": SCHEMA,
    "name": "synthetic",
    "config": {},
    "data": {"name": "digits", "n_test": 0},
    "n_examples": 0,
    "seeds": [0],
    "attack": "PGD()",
    "headline_attack": None,
    "attack_budget": {},
    "grid": {"eps_x": [0.0], "eps_w": [0.0], "scopes": ["per-example"]},
    "headline": {"eps_x": 0.0, "eps_w": 0.0},
    "models": {},
    "seconds": 0.0,
    "versions": {},
}


def _model(partial: dict[str, Any]) -> dict[str, Any]:
    model = {**_MODEL, **partial}
    model["runs"] = [{**_RUN, **run} for run in model["runs"]]
    return model


def study_results(partial: dict[str, Any]) -> StudyResults:
    """`partial` (results.json's layout, any subset of its keys, models and runs partial too) as typed results."""
    data = {**_STUDY, **partial}
    data["models"] = {name: _model(m) for name, m in data["models"].items()}
    return StudyResults.from_json(data)
