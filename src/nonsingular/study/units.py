"""The units of a study and what runs them anywhere: a (model, seed) is a training unit, then an evaluation
unit that needs its trained model. `plan_units` lists them for an executor; `train_unit` and `evaluate_unit`
run in whatever process the executor chooses (this one, a pool worker, a Ray worker) from picklable arguments,
and send every finished piece of evaluation to the driver, which records it in the study state.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks import Attack
from ..attacks.sanity import SanityFlag
from ..datasets import Dataset, load_data
from ..errors import InputError
from ..evaluation import Ray, attacked_radius, certified_mask, certified_radius
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..runtime import distributed as dist
from ..runtime.executors import Outbox, Resources, Unit
from ..runtime.locks import FileLock
from ..threat import ThreatModel
from .cache import model_path, unit_keys
from .cells import extra_axes
from .model_run import StudyProgress, _ModelRun
from .records import SeedRun, UnitResult
from .schema import StudyConfig

__all__ = ["StudyJob", "TrainedModel", "UnitState", "evaluate_unit", "plan_units", "train_unit"]

#: What a unit declares beyond its data: the interpreter, torch and a model's working memory.
BASE_MEMORY = 512 * 2**20


@dataclass
class StudyJob:
    """What every unit of one study needs, picklable and small: the settings, how many test examples, the model
    cache and the device. The data is loaded once per process that runs units (not sent along with each unit).
    """

    config_json: dict[str, Any]
    n: int
    cache_dir: str
    device: str
    _loaded: tuple[StudyConfig, Dataset] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, config: StudyConfig, data: Dataset, n: int, cache_dir: Path, device: torch.device) -> StudyJob:
        """The job of a study whose data this process has loaded already (units run here reuse it)."""
        return cls(config.model_dump(mode="json"), n, str(cache_dir), str(device), (config, data))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}

    def context(self) -> tuple[StudyConfig, Dataset, Tensor, Tensor, torch.device]:
        """(config, data, x, y, device) in this process: the first `n` test examples on the device."""
        if self._loaded is None:
            config = StudyConfig(**self.config_json)
            self._loaded = (config, load_data(config.data, seed=config.seed))
        config, data = self._loaded
        device = torch.device(self.device)
        return config, data, data.x_test[: self.n].to(device), data.y_test[: self.n].to(device), device


@dataclass
class TrainedModel:
    """A training unit's result: the model (eval mode, on the CPU so that it travels between processes),
    its checkpoint metadata, whether it came from the cache, the seconds training took, and the cache file the
    driver writes it to (None when it came from there)."""

    model: nn.Module
    metadata: dict[str, Any]
    cached: bool
    seconds: float
    save_to: str | None


class UnitState:
    """A unit's view of the study state: its own finished pieces (from the driver, when the unit started), and
    every new one sent to the driver (which writes state.json) as soon as it is done."""

    def __init__(self, values: dict[str, Any], outbox: Outbox) -> None:
        self.values, self.outbox = dict(values), outbox

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value
        self.outbox.send(("put", key, value))


def _progress(outbox: Outbox) -> StudyProgress:
    def send(label: str, done: int, total: int) -> None:
        outbox.send(("progress", label, done, total))

    return send


def train_unit(outbox: Outbox, job: StudyJob, k: int, seed: int) -> TrainedModel:
    """Model `k` trained with `seed`: from the model cache, or trained now (the driver caches it)."""
    from .model_units import train_for_study

    config, data, _, _, device = job.context()
    entry = config.models[k]
    path = model_path(config, entry, data, seed, Path(job.cache_dir))
    t0 = time.perf_counter()
    # One trainer per cache entry: a second study sharing the cache waits for the first's model and reuses it.
    # The entry is saved under its lock (not by the driver afterwards), so a waiter never finds it missing.
    lock = (
        nullcontext()
        if dist.is_distributed()
        else FileLock(path.with_suffix(".lock"), f"cache entry {path}", wait=None)
    )
    with lock:
        if path.exists():
            ckpt = load_checkpoint(path)
            if ckpt.metadata.get("data", {}).get("fingerprint") not in (None, data.fingerprint):
                raise InputError(f"{path} was trained on other data than its cache key says; delete it to retrain")
            metadata = {**ckpt.metadata, "cache_file": str(path)}
            return TrainedModel(ckpt.model.cpu(), metadata, True, _seconds(metadata, t0), None)
        model, metadata = train_for_study(config, entry, data, _progress(outbox), str(device), seed)
        if dist.rank() == 0:
            save_checkpoint(path, model, metadata)
    return TrainedModel(model.eval().cpu(), metadata, False, _seconds(metadata, t0), None)


def _seconds(metadata: dict[str, Any], t0: float) -> float:
    return float(metadata.get("training", {}).get("seconds", time.perf_counter() - t0))


def evaluate_unit(
    outbox: Outbox, job: StudyJob, k: int, seed: int, values: dict[str, Any], trained: TrainedModel
) -> UnitResult:
    """One model and seed, its model trained: attack every grid cell of every parametrization, certify, sanity
    flags, radii, scale and quantization analyses. `values` are the unit's pieces finished before."""
    config, data, x, y, device = job.context()
    entry = config.models[k]
    state, progress = UnitState(values, outbox), _progress(outbox)
    attack = config.attack.build(seed)
    model, metadata = trained.model.to(device), trained.metadata
    with torch.no_grad():
        clean_correct = model(x).argmax(1) == y
    t_eval = time.perf_counter()
    run = _ModelRun(entry.name, seed, model, x, y, config, data, state, progress)
    points = run.axes.points
    special = {}
    if config.attack.headline_kind is not None:  # a stronger attack where the headline table reads
        special[(config.headline.eps_x, config.headline.eps_w)] = config.attack.build(seed, headline=True)
    cells = run.attack_cells(points, attack, clean_correct, special)
    extra = {}
    for axes in extra_axes(config):
        other = _ModelRun(entry.name, seed, model, x, y, config, data, state, progress, axes)
        extra[axes.tag] = other.attack_cells(axes.points, attack, clean_correct)
    certified = run.certify_cells(config.certify.points or points, clean_correct, config.certify.n_examples)
    flags = run.sanity_flags(cells, float(clean_correct.float().mean()), config.headline, attack)
    radius = None
    if config.radius.enabled:
        key = f"radius/{entry.name}/{seed}"
        if state.get(key) is None:
            state.put(key, _radii(model, x, y, config, data, attack, progress, run.label))
        radius = state.get(key)
    scale = None
    if config.scale.enabled:
        key = f"scale/{entry.name}/{seed}"
        if state.get(key) is None:
            state.put(key, run.scale_analysis(config, attack, progress))
        scale = state.get(key)
    quantization = None
    if config.quantization.enabled:
        key = f"quantization/{entry.name}/{seed}"
        if state.get(key) is None:
            state.put(key, run.quantization(config, attack))
        quantization = state.get(key)
    metrics = metadata.get("metrics") or [{}]
    validation = {k: v for k, v in metrics[-1].items() if k.startswith("val_")} or None
    record = SeedRun(
        seed=seed,
        clean_accuracy=float(clean_correct.float().mean()),
        train_seconds=trained.seconds,
        cached=trained.cached,
        cache_file=metadata.get("cache_file"),
        eval_seconds=time.perf_counter() - t_eval,
        training=metadata.get("training", {}),
        validation=validation,
        radius=radius,
        scale=scale,
        quantization=quantization,
    )
    return UnitResult(record, cells, extra, certified, [SanityFlag(**f) for f in flags])


def train_name(name: str, seed: int) -> str:
    return f"train {name} seed {seed}"


def evaluate_name(name: str, seed: int) -> str:
    return f"evaluate {name} seed {seed}"


def plan_units(
    config: StudyConfig, data: Dataset, job: StudyJob, state_values: dict[str, Any], device: torch.device
) -> list[Unit]:
    """Every (model, seed) of the study as a training unit, then its evaluation unit (which needs the trained
    model), in the order a one-process run takes them: every seed of the first model first.

    Each unit declares one CPU, a GPU when the study's device is CUDA, and a memory estimate (the data's tensors
    twice over plus a fixed allowance), so a scheduler places it where it fits.
    """
    data_bytes = sum(t.element_size() * t.numel() for t in (data.x_train, data.y_train, data.x_test, data.y_test))
    resources = Resources(cpus=1.0, gpus=1.0 if device.type == "cuda" else 0.0, memory=BASE_MEMORY + 2 * data_bytes)
    units = []
    for k, entry in enumerate(config.models):
        for seed in config.run_seeds:
            belongs = unit_keys(entry.name, seed)
            values = {key: v for key, v in state_values.items() if belongs(key)}
            trained = train_name(entry.name, seed)
            units.append(Unit(trained, train_unit, (job, k, seed), resources=resources))
            units.append(
                Unit(evaluate_name(entry.name, seed), evaluate_unit, (job, k, seed, values), (trained,), resources)
            )
    return units


def _radii(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    config: StudyConfig,
    data: Dataset,
    attack: Attack,
    progress: StudyProgress | None,
    name: str,
) -> dict[str, Any]:
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
    chosen = rc.method or (config.certify.methods[-1] if config.certify.methods else None)
    method = chosen.value if chosen is not None else "ibp"
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
