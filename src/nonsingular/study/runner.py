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
from ..attacks import Attack
from ..certify import certified_mask
from ..checkpoint import atomic_write, check_output_path, load_checkpoint, save_checkpoint
from ..datasets import Dataset, load_data
from ..errors import InputError, describe
from ..evaluate import attack_and_verify, attack_cell
from ..radius import Ray, attacked_radius, certified_radius
from ..sanity import RandomNoise, gradient_flag, nested_flag, noise_flag, train_eval_flag
from ..threat import Scope, ThreatModel
from ..training.trainer import architecture_spec
from .config import ModelEntry, StudyConfig
from .report import write_report
from .training import train_config, train_for_study

__all__ = ["StudyState", "run_study"]

log = logging.getLogger(__name__)

#: progress(label, done, total)
StudyProgress = Callable[[str, int, int], None]


class StudyState:
    """Finished pieces of a study by key, persisted as JSON after every update."""

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
            text = json.dumps({"fingerprint": self.fingerprint, "values": self.values}, allow_nan=False)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))


def _train_or_load(
    config: StudyConfig,
    entry: ModelEntry,
    data: Dataset,
    cache_dir: Path,
    progress: StudyProgress | None,
    device: torch.device,
) -> tuple[nn.Module, dict[str, Any], bool]:
    """The entry's trained model from the cache, or trained now and cached; (model, metadata, was_cached)."""
    path = cache_dir / f"{entry.name.replace('/', '_')}-{config.model_key(entry, data.fingerprint)}.safetensors"
    if path.exists():
        ckpt = load_checkpoint(path)
        if ckpt.metadata.get("data", {}).get("fingerprint") not in (None, data.fingerprint):
            raise InputError(f"{path} was trained on other data than its cache key says; delete it to retrain")
        log.info("model %s: reusing %s", entry.name, path)
        return ckpt.model.to(device), {**ckpt.metadata, "cache_file": str(path)}, True
    model, metadata = train_for_study(config, entry, data, progress, str(device))
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


def _mask_text(mask: Tensor) -> str:
    """A per-example bool mask as a compact string of 0/1 for the state file."""
    return "".join("1" if v else "0" for v in mask.tolist())


def _mask_from_text(text: str) -> Tensor:
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def run_study(
    config: StudyConfig,
    out_dir: Path,
    cache_dir: Path,
    progress: StudyProgress | None = None,
    device: torch.device | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run (or resume) the study on `device` (default cpu); returns the path of report.html and the results."""
    device = torch.device("cpu") if device is None else device
    started = time.perf_counter()
    data = load_data(config.data, seed=config.seed)
    check_study(config, data, out_dir, cache_dir)
    n = len(data.y_test) if config.n_examples is None else min(config.n_examples, len(data.y_test))
    x, y = data.x_test[:n].to(device), data.y_test[:n].to(device)
    attack = config.attack.build(config.seed)
    fingerprint = json.dumps(config.model_dump(mode="json"), sort_keys=True) + __version__
    state = StudyState(out_dir / "state.json", fingerprint)
    grid = config.grid
    points = [(ex, ew) for ex in grid.eps_x for ew in grid.eps_w if ex > 0 or ew > 0]
    models: dict[str, Any] = {}

    for entry in config.models:
        t0 = time.perf_counter()
        model, metadata, cached = _train_or_load(config, entry, data, cache_dir, progress, device)
        train_seconds = metadata.get("training", {}).get("seconds", time.perf_counter() - t0)
        with torch.no_grad():
            clean_correct = model(x).argmax(1) == y
        t_eval = time.perf_counter()
        run = _ModelRun(entry.name, model, x, y, config, data, state, progress)
        cells = run.attack_cells(points, attack, clean_correct)
        certified = run.certify_cells(points, clean_correct)
        flags = run.sanity_flags(cells, float(clean_correct.float().mean()), config.headline, attack)
        radius = None
        if config.radius.enabled:
            key = f"radius/{entry.name}"
            if state.get(key) is None:
                state.put(key, _radii(model, x, y, config, data, attack, progress, entry.name))
            radius = state.get(key)
        models[entry.name] = {
            "objective": entry.objective,
            "options": entry.options,
            "clean_accuracy": float(clean_correct.float().mean()),
            "train_seconds": float(train_seconds),
            "cached": cached,
            "cache_file": metadata.get("cache_file"),
            "eval_seconds": time.perf_counter() - t_eval,
            "training": metadata.get("training", {}),
            "cells": cells,
            "certified": certified,
            "radius": radius,
            "flags": flags,
        }

    results = {
        "schema": "nonsingular.study/1",
        "name": config.name,
        "config": config.model_dump(mode="json"),
        "data": data.describe(),
        "n_examples": n,
        "attack": repr(attack),
        "attack_budget": attack.budget(),
        "grid": grid.model_dump(mode="json"),
        "headline": config.headline.model_dump(mode="json"),
        "models": models,
        "seconds": time.perf_counter() - started,
        "versions": {"nonsingular": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    report = write_report(results, out_dir) if dist.rank() == 0 else out_dir / "report.html"
    return report, results


class _ModelRun:
    """The grid evaluations of one model, each recorded in the study state as soon as it is done."""

    def __init__(self, name, model, x, y, config: StudyConfig, data: Dataset, state: StudyState, progress) -> None:
        self.name, self.model, self.x, self.y = name, model, x, y
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
            self.progress(f"{self.name}: {label}", done, total)

    def attack_cells(self, points, attack: Attack, clean_correct: Tensor) -> list[dict[str, Any]]:
        cells = []
        scopes = sorted(self.grid.scopes, key=lambda s: s is Scope.SHARED)  # per-example first: shared may copy it
        for i, (ex, ew) in enumerate(points):
            for scope in scopes:
                key = f"cell/{self.name}/{ex}/{ew}/{scope.value}"
                if self.state.get(key) is None:
                    per_example = self.state.get(f"cell/{self.name}/{ex}/{ew}/{Scope.PER_EXAMPLE.value}")
                    if ew == 0 and scope is Scope.SHARED and per_example is not None:
                        cell = dict(per_example)  # no weight moves: the shared cell is the per-example one
                    else:
                        threat = self.threat(ex, ew, scope)
                        c, robust = attack_cell(self.model, self.x, self.y, threat, attack, clean_correct, _silent)
                        cell = {"accuracy": c.accuracy, "verified": c.verified, "paths": c.paths}
                        if c.verified:  # examples that survived: the only ones a certificate can hold for
                            cell["robust"] = _mask_text(robust)
                    cell.update({"eps_x": ex, "eps_w": ew, "scope": scope.value})
                    self.state.put(key, cell)
                cells.append({k: v for k, v in self.state.get(key).items() if k != "robust"})
            self._tick("attacks", i + 1, len(points))
        return cells

    def sanity_flags(self, cells, clean: float, headline, attack: Attack) -> list[dict[str, Any]]:
        """Sanity flags of this model (recorded in the state, so a resumed study does not redo the noise check).

        nested: along each grid axis, and from shared to per-example scope, the larger threat set may not show
        a higher robust accuracy (the clean accuracy stands at (0, 0)). noise: random points at the headline
        point's per-example joint cell. gradients and train-eval: the model at the clean points.
        """
        key = f"flags/{self.name}"
        if self.state.get(key) is not None:
            return self.state.get(key)["flags"]

        def label(ex: float, ew: float, scope: str) -> str:
            return f"{self.name}: {scope} eps_x={ex:g} eps_w={ew:g}"

        accuracy = {label(c["eps_x"], c["eps_w"], c["scope"]): c["accuracy"] for c in cells}
        pairs = []
        for scope in {c["scope"] for c in cells}:
            accuracy[label(0.0, 0.0, scope)] = clean
            for i, ex in enumerate(self.grid.eps_x):
                for j, ew in enumerate(self.grid.eps_w):
                    if i + 1 < len(self.grid.eps_x):
                        pairs.append((label(ex, ew, scope), label(self.grid.eps_x[i + 1], ew, scope)))
                    if j + 1 < len(self.grid.eps_w):
                        pairs.append((label(ex, ew, scope), label(ex, self.grid.eps_w[j + 1], scope)))
                    if scope == Scope.SHARED.value:
                        pairs.append((label(ex, ew, scope), label(ex, ew, Scope.PER_EXAMPLE.value)))
        found = [nested_flag(accuracy, pairs), gradient_flag(self.model, self.x, self.y, self.name)]
        found.append(train_eval_flag(self.model, self.x, self.y, self.name))
        hx, hw = headline.eps_x, headline.eps_w
        cell = self.state.get(f"cell/{self.name}/{hx}/{hw}/{Scope.PER_EXAMPLE.value}") or {}
        if "robust" in cell:
            noise = RandomNoise(batch_size=attack.batch_size, seed=7919)
            checked = attack_and_verify(self.model, self.x, self.y, self.threat(hx, hw), noise)
            if checked.passed:
                found.append(
                    noise_flag(label(hx, hw, Scope.PER_EXAMPLE.value), _mask_from_text(cell["robust"]), checked.correct)
                )
        flags = [f.to_json() for f in found if f is not None]
        self.state.put(key, {"flags": flags})
        return flags

    def certify_cells(self, points, clean_correct: Tensor) -> list[dict[str, Any]]:
        certified = []
        for i, (ex, ew) in enumerate(points):
            for method in self.methods:
                key = f"cert/{self.name}/{ex}/{ew}/{method}"
                if self.state.get(key) is None:
                    t1 = time.perf_counter()
                    # Bound only what the verified per-example attack left correct (same count, far less work).
                    attacked = self.state.get(f"cell/{self.name}/{ex}/{ew}/{Scope.PER_EXAMPLE.value}") or {}
                    candidates = _mask_from_text(attacked["robust"]) if "robust" in attacked else clean_correct
                    mask = certified_mask(
                        self.model, self.x, self.y, self.threat(ex, ew), method, candidates=candidates.to(self.y.device)
                    )
                    self.state.put(
                        key,
                        {
                            "eps_x": ex,
                            "eps_w": ew,
                            "method": method,
                            "certified_accuracy": float(mask.float().mean()),
                            "bounded_examples": int(candidates.sum()),
                            "seconds": time.perf_counter() - t1,
                        },
                    )
                certified.append(self.state.get(key))
            self._tick("certificates", i + 1, len(points))
        return certified


def _silent(done: int, total: int) -> None:
    """No per-batch progress inside a grid cell (the study reports progress per cell)."""


def _radii(model, x, y, config: StudyConfig, data: Dataset, attack: Attack, progress, name: str) -> dict[str, Any]:
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
