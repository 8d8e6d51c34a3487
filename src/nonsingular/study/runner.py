"""Run a study: train (or reuse) each model, attack it on the grid, certify it, measure radii, write the report.

Every finished piece is recorded in `<out>/state.json` (atomically) before the next starts, so a study stopped
at any point resumes where it stopped. Trained models live in a cache keyed by the hash of what determines
them, so re-running a study with other evaluation settings does not retrain.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import distributed as dist
from .._version import __version__
from ..architectures import build_model
from ..attacks import PGD
from ..certify import Certificate, certified_mask, certify
from ..checkpoint import atomic_write, check_output_path, load_checkpoint, save_checkpoint
from ..datasets import Dataset, load_data
from ..errors import InputError, describe
from ..evaluate import Cell, evaluate_cell
from ..radius import Ray, attacked_radius, certified_radius
from ..threat import Scope, ThreatModel
from ..training.trainer import architecture_spec
from .config import ModelEntry, StudyConfig
from .report import write_report
from .training import train_config, train_for_study

__all__ = ["StudyState", "run_study"]

log = logging.getLogger(__name__)

#: progress(label, done, total)
StudyProgress = Callable[[str, int, int], None]


#: The state file's schema; files without it (or with another) were written by another version of the study.
STATE_SCHEMA = "nonsingular.study-state/2"


class StudyState:
    """Finished pieces of a study by key (each the to_json of a typed record), persisted as JSON after every
    update."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.values: dict[str, Any] = {}
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise InputError(
                    f"{path} is unreadable ({describe(err)}); rerun with --fresh to start afresh"
                ) from None
            if not isinstance(saved, dict):
                raise InputError(f"{path} does not hold a study state; rerun with --fresh to start afresh")
            if saved.get("schema") != STATE_SCHEMA:
                raise InputError(
                    f"{path} was written by another version of the study (schema {saved.get('schema', 'none')}, "
                    f"this one reads {STATE_SCHEMA}); rerun with --fresh to recompute it"
                )
            if saved.get("fingerprint") == fingerprint:
                self.values = saved.get("values", {})
            else:
                log.info("study settings changed since %s was written: starting its evaluation afresh", path)
        self.fingerprint = fingerprint

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value
        if dist.rank() == 0:
            payload = {"schema": STATE_SCHEMA, "fingerprint": self.fingerprint, "values": self.values}
            text = json.dumps(payload, allow_nan=False)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))


def _train_or_load(
    config: StudyConfig,
    entry: ModelEntry,
    seed: int,
    data: Dataset,
    cache_dir: Path,
    progress: StudyProgress | None,
    device: torch.device,
) -> tuple[nn.Module, dict[str, Any], bool]:
    """The entry's model trained with `seed`, from the cache or trained now and cached; (model, metadata,
    was_cached)."""
    key = config.model_key(entry, data.fingerprint, seed)
    path = cache_dir / f"{entry.name.replace('/', '_')}-{key}.safetensors"
    if path.exists():
        ckpt = load_checkpoint(path)
        if ckpt.metadata.get("data", {}).get("fingerprint") not in (None, data.fingerprint):
            raise InputError(f"{path} was trained on other data than its cache key says; delete it to retrain")
        log.info("model %s seed %d: reusing %s", entry.name, seed, path)
        return ckpt.model.to(device), {**ckpt.metadata, "cache_file": str(path)}, True
    model, metadata = train_for_study(config, entry, data, progress, str(device), seed)
    if dist.rank() == 0:
        save_checkpoint(path, model, metadata)
    return model.eval(), metadata, False


def check_study(config: StudyConfig, data: Dataset, out_dir: Path, cache_dir: Path) -> None:
    """Everything a study depends on, checked before any work: each model's training settings and architecture
    on this data, and that the output and cache folders take files.

    Raises:
        InputError: naming the model, setting or folder.
    """
    for entry in config.models:
        cfg = train_config(config, entry)
        try:
            build_model(architecture_spec(cfg, data))
        except ValueError as err:
            raise InputError(f"model '{entry.name}': architecture: {describe(err)}") from None
    for folder in (out_dir, cache_dir):
        check_output_path(folder / "state.json")


def run_study(
    config: StudyConfig,
    out_dir: Path,
    cache_dir: Path,
    progress: StudyProgress | None = None,
    device: torch.device | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run (or resume) the study on `device` (default cpu); returns the path of report.html and the results.

    Every model is trained and evaluated once per seed of `config.run_seeds` (the seed sets initialisation,
    batch order and the attack's random starts; the data split stays `config.seed`).
    """
    device = torch.device("cpu") if device is None else device
    started = time.perf_counter()
    data = load_data(config.data, seed=config.seed)
    check_study(config, data, out_dir, cache_dir)
    n = len(data.y_test) if config.n_examples is None else min(config.n_examples, len(data.y_test))
    x, y = data.x_test[:n].to(device), data.y_test[:n].to(device)
    fingerprint = json.dumps(config.model_dump(mode="json"), sort_keys=True) + __version__
    state = StudyState(out_dir / "state.json", fingerprint)
    grid = config.grid
    points = [(ex, ew) for ex in grid.eps_x for ew in grid.eps_w if ex > 0 or ew > 0]
    models: dict[str, Any] = {}
    attack = _attack(config, config.run_seeds[0])

    for entry in config.models:
        runs, cells, certified = [], [], []
        for seed in config.run_seeds:
            attack = _attack(config, seed)
            t0 = time.perf_counter()
            model, metadata, cached = _train_or_load(config, entry, seed, data, cache_dir, progress, device)
            train_seconds = metadata.get("training", {}).get("seconds", time.perf_counter() - t0)
            with torch.no_grad():
                clean_correct = model(x).argmax(1) == y
            t_eval = time.perf_counter()
            run = _ModelRun(entry.name, seed, model, x, y, config, data, state, progress)
            cells += run.attack_cells(points, attack, clean_correct)
            certified += run.certify_cells(points, clean_correct)
            radius = None
            if config.radius.enabled:
                key = f"radius/{entry.name}/{seed}"
                if state.get(key) is None:
                    state.put(key, _radii(model, x, y, config, data, attack, progress, run.label))
                radius = state.get(key)
            runs.append(
                {
                    "seed": seed,
                    "clean_accuracy": float(clean_correct.float().mean()),
                    "train_seconds": float(train_seconds),
                    "cached": cached,
                    "cache_file": metadata.get("cache_file"),
                    "eval_seconds": time.perf_counter() - t_eval,
                    "training": metadata.get("training", {}),
                    "radius": radius,
                }
            )
        models[entry.name] = {
            "objective": entry.objective,
            "options": entry.options,
            "clean_accuracy": sum(r["clean_accuracy"] for r in runs) / len(runs),
            "runs": runs,
            "cells": cells,
            "certified": certified,
        }

    results = {
        "schema": "nonsingular.study/2",
        "name": config.name,
        "config": config.model_dump(mode="json"),
        "data": data.describe(),
        "n_examples": n,
        "seeds": config.run_seeds,
        "attack": repr(attack),
        "grid": grid.model_dump(mode="json"),
        "headline": config.headline.model_dump(mode="json"),
        "models": models,
        "seconds": time.perf_counter() - started,
        "versions": {"nonsingular": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    report = write_report(results, out_dir) if dist.rank() == 0 else out_dir / "report.html"
    return report, results


def _attack(config: StudyConfig, seed: int) -> PGD:
    """The study's attack with the random starts of `seed`."""
    a = config.attack
    return PGD(steps=a.steps, restarts=a.restarts, loss=a.loss, batch_size=a.batch_size, seed=seed)


class _ModelRun:
    """The grid evaluations of one model and seed, each recorded in the study state as soon as it is done."""

    def __init__(
        self, name, seed: int, model, x, y, config: StudyConfig, data: Dataset, state: StudyState, progress
    ) -> None:
        self.name, self.seed, self.model, self.x, self.y = name, seed, model, x, y
        self.label = name if len(config.run_seeds) == 1 else f"{name} seed {seed}"
        self.grid, self.domain = config.grid, data.domain
        self.methods = [m.value for m in config.certify.methods]
        self.state, self.progress = state, progress

    def threat(self, eps_x: float, eps_w: float, scope: Scope = Scope.PER_EXAMPLE) -> ThreatModel:
        g = self.grid
        return ThreatModel(
            eps_x=eps_x,
            eps_w=eps_w,
            weight_ball=g.weight_ball,
            weight_mode=g.weight_mode,
            scope=scope,
            domain=self.domain,
        )

    def _tick(self, label: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(f"{self.label}: {label}", done, total)

    def _key(self, kind: str, ex: float, ew: float, last: str) -> str:
        return f"{kind}/{self.name}/{self.seed}/{ex}/{ew}/{last}"

    def cell(self, ex: float, ew: float, scope: Scope) -> Cell | None:
        """The finished cell at (ex, ew, scope), or None."""
        saved = self.state.get(self._key("cell", ex, ew, scope.value))
        return None if saved is None else Cell.from_json(saved)

    def attack_cells(self, points, attack: PGD, clean_correct: Tensor) -> list[dict[str, Any]]:
        """Every grid cell in both scopes via evaluate_cell (as `nonsingular evaluate`); the result rows."""
        rows = []
        scopes = sorted(self.grid.scopes, key=lambda s: s is Scope.SHARED)  # per-example first: shared may copy it
        for i, (ex, ew) in enumerate(points):
            for scope in scopes:
                key = self._key("cell", ex, ew, scope.value)
                if self.state.get(key) is None:
                    per_example = self.cell(ex, ew, Scope.PER_EXAMPLE)
                    threat = self.threat(ex, ew, scope)
                    cell = evaluate_cell(self.model, self.x, self.y, threat, attack, clean_correct, None, per_example)
                    self.state.put(key, cell.to_json())
                cell = self.cell(ex, ew, scope)
                assert cell is not None
                rows.append({"seed": self.seed, "eps_x": ex, "eps_w": ew, "scope": scope.value, **_row(cell)})
            self._tick("attacks", i + 1, len(points))
        return rows

    def certify_cells(self, points, clean_correct: Tensor) -> list[dict[str, Any]]:
        """Certificates at every grid point via certify (as `nonsingular certify`), bounding only the examples
        the verified per-example attack left correct (a sound bound cannot certify the others)."""
        rows = []
        for i, (ex, ew) in enumerate(points):
            missing = [m for m in self.methods if self.state.get(self._key("cert", ex, ew, m)) is None]
            if missing:
                attacked = self.cell(ex, ew, Scope.PER_EXAMPLE)
                candidates = attacked.robust if attacked is not None and attacked.verified else None
                candidates = clean_correct if candidates is None else candidates.to(self.y.device)
                threat = self.threat(ex, ew)
                rows_in = candidates.nonzero().flatten()
                for method in missing:
                    if len(rows_in) == 0:
                        record = Certificate(threat.describe(), method, 0.0, 0, len(self.y), 0, 0.0)
                    else:
                        report = certify(self.model, self.x[rows_in], self.y[rows_in], threat, [method])
                        record = Certificate.of(report.methods[method], threat, len(self.y))
                    self.state.put(self._key("cert", ex, ew, method), record.to_json())
            for method in self.methods:
                record = Certificate.from_json(self.state.get(self._key("cert", ex, ew, method)))
                rows.append(
                    {
                        "seed": self.seed,
                        "eps_x": ex,
                        "eps_w": ew,
                        "method": method,
                        "certified_accuracy": record.certified_accuracy,
                        "bounded_examples": record.bounded_examples,
                        "seconds": record.seconds,
                    }
                )
            self._tick("certificates", i + 1, len(points))
        return rows


def _row(cell: Cell) -> dict[str, Any]:
    """The fields of a cell that results.json keeps per grid cell."""
    return {"accuracy": cell.accuracy, "verified": cell.verified, "paths": cell.paths}


def _radii(model, x, y, config: StudyConfig, data: Dataset, attack: PGD, progress, name: str) -> dict[str, Any]:
    """Attacked (upper) and certified (lower) per-example radii along the configured ray."""
    rc, grid = config.radius, config.grid
    base = ThreatModel(weight_ball=grid.weight_ball, weight_mode=grid.weight_mode, domain=data.domain)
    ray = Ray(rc.k_x, rc.k_w, base, k_b=rc.k_b)
    s_hi = min(rc.s_max, ray.s_max)
    xs, ys = x[: rc.n_examples], y[: rc.n_examples]
    if progress is not None:
        progress(f"{name}: radius", 0, 2)
    upper = attacked_radius(model, xs, ys, ray, attack, s_hi, rc.iterations)
    if progress is not None:
        progress(f"{name}: radius", 1, 2)
    method = config.certify.methods[-1].value if config.certify.methods else "ibp"
    lower = certified_radius(xs, ys, ray, lambda a, b, t: certified_mask(model, a, b, t, method), s_hi, rc.iterations)
    if progress is not None:
        progress(f"{name}: radius", 2, 2)
    return {
        "k_x": rc.k_x,
        "k_w": rc.k_w,
        "k_b": rc.k_b,
        "s_max": s_hi,
        "certify_method": method,
        "attack": upper.radius.tolist(),
        "certified": lower.radius.tolist(),
        "attack_censored": upper.censored.tolist(),
        "certified_censored": lower.censored.tolist(),
    }
