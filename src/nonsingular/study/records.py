"""The study's results as typed records: one run of a model (a seed), one (model, seed) unit's evaluation, one
model over its seeds, and the whole study. Each round-trips to the JSON that results.json holds, key for key.

Table rows (grid cells, certificates) stay JSON rows: they are what the CSVs and the report read, one dict per
row with the columns named in `cells.GridCell.row` and `model_run._ModelRun.certify_cells`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..attacks.sanity import SanityFlag

__all__ = ["ModelResult", "Row", "SeedRun", "StudyResults", "UnitResult"]

#: One row of a results table (a grid cell, a certificate), as results.json and the CSVs hold it.
Row = dict[str, Any]

SCHEMA = "nonsingular.study/2"


def _check_keys(cls: type, data: dict[str, Any]) -> None:
    names = {f.name for f in fields(cls)}
    if set(data) != names:
        raise ValueError(f"not a {cls.__name__} record: keys {sorted(data)}, expected {sorted(names)}")


@dataclass
class SeedRun:
    """One model trained with one seed and evaluated: what results.json keeps in a model's `runs`.

    Attributes:
        seed: the training and attack seed.
        clean_accuracy: on the study's test examples, in [0, 1].
        train_seconds: training wall time (the original run's, for a cached model).
        cached: the model came from the model cache.
        cache_file: the cache file it came from (None when trained in this run).
        eval_seconds: wall time of this seed's evaluation.
        training: the trainer's record (settings, seconds).
        validation: the last epoch's val_* metrics, if any.
        radius, scale, quantization: the optional analyses' records (None when off).
    """

    seed: int
    clean_accuracy: float
    train_seconds: float
    cached: bool
    cache_file: str | None
    eval_seconds: float
    training: dict[str, Any]
    validation: dict[str, Any] | None
    radius: dict[str, Any] | None
    scale: dict[str, Any] | None
    quantization: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SeedRun:
        """Raises: ValueError: not a run record."""
        _check_keys(cls, data)
        return cls(**data)


@dataclass
class UnitResult:
    """What one (model, seed) unit returns: its run, its grid cells (main grid and each extra parametrization by
    label), its certificates and its sanity flags."""

    run: SeedRun
    cells: list[Row]
    extra_cells: dict[str, list[Row]]
    certified: list[Row]
    flags: list[SanityFlag]


@dataclass
class ModelResult:
    """One model of the study over all its seeds: the runs in seed order, and every seed's rows together."""

    objective: str
    options: dict[str, Any]
    clean_accuracy: float
    runs: list[SeedRun]
    cells: list[Row]
    extra_cells: dict[str, list[Row]]
    certified: list[Row]
    flags: list[SanityFlag]

    @classmethod
    def of_units(cls, objective: str, options: dict[str, Any], parts: list[UnitResult]) -> ModelResult:
        """The model's record from its units in seed order; the clean accuracy is the mean over seeds."""
        runs = [p.run for p in parts]
        extra: dict[str, list[Row]] = {}
        for p in parts:
            for label, rows in p.extra_cells.items():
                extra.setdefault(label, []).extend(rows)
        return cls(
            objective=objective,
            options=options,
            clean_accuracy=sum(r.clean_accuracy for r in runs) / len(runs),
            runs=runs,
            cells=[c for p in parts for c in p.cells],
            extra_cells=extra,
            certified=[c for p in parts for c in p.certified],
            flags=[f for p in parts for f in p.flags],
        )

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["runs"] = [r.to_json() for r in self.runs]
        data["flags"] = [f.to_json() for f in self.flags]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelResult:
        """Raises: ValueError: not a model record."""
        _check_keys(cls, data)
        runs = [SeedRun.from_json(r) for r in data["runs"]]
        return cls(**{**data, "runs": runs, "flags": [SanityFlag(**f) for f in data["flags"]]})


@dataclass
class StudyResults:
    """A finished study: its settings, data, attack, grid, every model's record, timings and versions (what
    results.json holds before the report adds its summary and verdicts)."""

    name: str
    config: dict[str, Any]
    data: dict[str, Any]
    n_examples: int
    seeds: list[int]
    attack: str
    headline_attack: str | None
    attack_budget: dict[str, Any]
    grid: dict[str, Any]
    headline: dict[str, Any]
    models: dict[str, ModelResult]
    seconds: float
    versions: dict[str, str]
    schema: str = SCHEMA

    def to_json(self) -> dict[str, Any]:
        """results.json's content, in its key order (schema first)."""
        data: dict[str, Any] = {"schema": self.schema}
        data.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "schema"})
        data["models"] = {name: m.to_json() for name, m in self.models.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudyResults:
        """Reads results.json (its report-added `summary` and `verdicts` are ignored).

        Raises: ValueError: not study results of this schema.
        """
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not study results of schema {SCHEMA}: schema {data.get('schema')}")
        body = {k: v for k, v in data.items() if k not in ("summary", "verdicts")}
        _check_keys(cls, body)
        models = {name: ModelResult.from_json(m) for name, m in body["models"].items()}
        return cls(**{**body, "models": models})
