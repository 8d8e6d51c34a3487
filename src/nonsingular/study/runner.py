"""Run a study: train (or reuse) each model, attack it on the grid, certify it, measure radii, write the report.

Every finished piece is recorded in `<out>/state.json` (atomically) before the next starts, so a study stopped
at any point resumes where it stopped. Trained models live in a cache keyed by the hash of what determines
them, so re-running a study with other evaluation settings does not retrain.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields, replace
from multiprocessing.managers import SyncManager
from pathlib import Path
from queue import Empty
from typing import Any

import torch
from torch import Tensor, nn

from .._version import __version__
from ..attacks import PGD, Attack, Loss
from ..attacks.sanity import RandomNoise, gradient_flag, nested_flag, noise_flag, train_eval_flag
from ..datasets import Dataset, load_data
from ..errors import InputError, describe
from ..evaluation import (
    Cell,
    Certificate,
    Ray,
    attack_and_check,
    attacked_radius,
    certified_mask,
    certified_radius,
    certify,
    evaluate_cell,
)
from ..models import build_model
from ..models.checkpoint import atomic_write, check_output_path, load_checkpoint, save_checkpoint
from ..runtime import distributed as dist
from ..runtime.locks import FileLock
from ..runtime.signals import Stopped, check_stop, stop_requested
from ..threat import EpsMode, Scope, ThreatModel, WeightBall
from ..training.trainer import architecture_spec
from .model_units import train_config, train_for_study
from .quantization_grid import quantization_analysis
from .report import write_report
from .scale import PARAMETRIZATIONS, layer_stats, rescaled
from .schema import ModelEntry, StudyConfig

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
        check_stop()  # trust: SIGINT/SIGTERM stop here, between pieces, with this one kept (runtime/signals.py)


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
    # trust: one trainer per cache entry; a second run waits and then reuses it (torchrun ranks train together)
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
            model = build_model(architecture_spec(cfg, data))
        except ValueError as err:
            raise InputError(f"model '{entry.name}': architecture: {describe(err)}") from None
        if config.scale.enabled:
            try:
                rescaled(model, 2.0)
            except ValueError as err:
                raise InputError(
                    f"model '{entry.name}': scale analysis: {describe(err)}; set [scale] enabled = false"
                ) from None
    for folder in (out_dir, cache_dir):
        check_output_path(folder / "state.json")


def run_study(
    config: StudyConfig,
    out_dir: Path,
    cache_dir: Path,
    progress: StudyProgress | None = None,
    device: torch.device | None = None,
    workers: int = 1,
) -> tuple[Path, dict[str, Any]]:
    """Run (or resume) the study on `device` (default cpu); returns the path of report.html and the results.

    Every model is trained and evaluated once per seed of `config.run_seeds` (the seed sets initialisation,
    batch order and the attack's random starts; the data split stays `config.seed`). With `workers` > 1 the
    (model, seed) units (training, then every evaluation of that model and seed) run in that many worker
    processes, each with its share of this process's CPUs as torch threads; this process keeps the state file
    (every finished piece is still recorded as it finishes, so a stopped study resumes) and writes the report.
    The results do not depend on `workers`: every unit is seeded by its own seed.
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
    models: dict[str, Any] = {}
    attack = config.attack.build(config.run_seeds[0])
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if workers > 1 and dist.is_distributed():
        raise InputError("--workers > 1 runs its own processes: do not combine it with torchrun")

    units = [(k, seed) for k in range(len(config.models)) for seed in config.run_seeds]
    if workers > 1 and len(units) > 1:
        done = _run_parallel(config, units, data, n, state, out_dir, cache_dir, progress, device, workers)
    else:
        done = {
            (k, seed): _evaluate_unit(config, config.models[k], seed, data, x, y, state, cache_dir, progress, device)
            for k, seed in units
        }
    for k, entry in enumerate(config.models):
        parts = [done[(k, seed)] for seed in config.run_seeds]
        runs = [p["run"] for p in parts]
        extra: dict[str, list[dict[str, Any]]] = {}
        for p in parts:
            for label, rows in p["extra_cells"].items():
                extra.setdefault(label, []).extend(rows)
        models[entry.name] = {
            "objective": entry.objective,
            "options": entry.options,
            "clean_accuracy": sum(r["clean_accuracy"] for r in runs) / len(runs),
            "runs": runs,
            "cells": [c for p in parts for c in p["cells"]],
            "extra_cells": extra,
            "certified": [c for p in parts for c in p["certified"]],
            "flags": [f for p in parts for f in p["flags"]],
        }

    results = {
        "schema": "nonsingular.study/2",
        "name": config.name,
        "config": config.model_dump(mode="json"),
        "data": data.describe(),
        "n_examples": n,
        "seeds": config.run_seeds,
        "attack": repr(attack),
        "headline_attack": (
            repr(config.attack.build(config.run_seeds[0], headline=True)) if config.attack.headline_kind else None
        ),
        "attack_budget": attack.budget(),
        "grid": grid.model_dump(mode="json"),
        "headline": config.headline.model_dump(mode="json"),
        "models": models,
        "seconds": time.perf_counter() - started,
        "versions": {"nonsingular": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    report = write_report(results, out_dir) if dist.rank() == 0 else out_dir / "report.html"
    return report, results


@contextmanager
def _workers_end_on_stop(pool: ProcessPoolExecutor) -> Iterator[None]:
    """trust: on SIGINT/SIGTERM (Stopped), cancel the units not started and end the running workers, whose
    finished pieces are already in the state (the pool's own exit would wait for their units to finish)."""
    try:
        yield
    except Stopped:
        workers = list((getattr(pool, "_processes", None) or {}).values())  # no public API ends running workers
        pool.shutdown(wait=False, cancel_futures=True)
        for process in workers:
            process.terminate()
        raise


@dataclass(frozen=True)
class _Axes:
    """One weight parametrization's grid: its ball and mode, the eps_x and eps_w axes, and the tag of its state
    keys ("" for the main grid, "ball mode" for a [[grid.parametrizations]] entry)."""

    ball: WeightBall
    mode: EpsMode
    eps_x: list[float]
    eps_w: list[float]
    tag: str = ""

    @property
    def points(self) -> list[tuple[float, float]]:
        return [(ex, ew) for ex in self.eps_x for ew in self.eps_w if ex > 0 or ew > 0]


def _main_axes(config: StudyConfig) -> _Axes:
    g = config.grid
    return _Axes(g.weight_ball, g.weight_mode, list(g.eps_x), list(g.eps_w))


def _extra_axes(config: StudyConfig) -> list[_Axes]:
    """The [[grid.parametrizations]]: eps_x in {0, headline eps_x} (the weight-only and joint cells the claims
    use) x the parametrization's own eps_w."""
    xs = sorted({0.0, config.headline.eps_x})
    return [_Axes(p.weight_ball, p.weight_mode, xs, list(p.eps_w), p.label) for p in config.grid.parametrizations]


def _evaluate_unit(
    config: StudyConfig,
    entry: ModelEntry,
    seed: int,
    data: Dataset,
    x: Tensor,
    y: Tensor,
    state: StudyState | _UnitState,
    cache_dir: Path,
    progress: StudyProgress | None,
    device: torch.device,
) -> dict[str, Any]:
    """One model and seed: train (or load), attack every grid cell of every parametrization, certify, sanity
    flags, radii and scale analysis; returns {run, cells, extra_cells, certified, flags}."""
    attack = config.attack.build(seed)
    t0 = time.perf_counter()
    model, metadata, cached = _train_or_load(config, entry, seed, data, cache_dir, progress, device)
    train_seconds = metadata.get("training", {}).get("seconds", time.perf_counter() - t0)
    with torch.no_grad():
        clean_correct = model(x).argmax(1) == y
    t_eval = time.perf_counter()
    run = _ModelRun(entry.name, seed, model, x, y, config, data, state, progress)  # type: ignore[arg-type]
    points = run.axes.points
    special = {}
    if config.attack.headline_kind is not None:  # a stronger attack where the headline table reads
        special[(config.headline.eps_x, config.headline.eps_w)] = config.attack.build(seed, headline=True)
    cells = run.attack_cells(points, attack, clean_correct, special)
    extra = {}
    for axes in _extra_axes(config):
        other = _ModelRun(entry.name, seed, model, x, y, config, data, state, progress, axes)  # type: ignore[arg-type]
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
    return {
        "run": {
            "seed": seed,
            "clean_accuracy": float(clean_correct.float().mean()),
            "train_seconds": float(train_seconds),
            "cached": cached,
            "cache_file": metadata.get("cache_file"),
            "eval_seconds": time.perf_counter() - t_eval,
            "training": metadata.get("training", {}),
            "validation": validation,
            "radius": radius,
            "scale": scale,
            "quantization": quantization,
        },
        "cells": cells,
        "extra_cells": extra,
        "certified": certified,
        "flags": flags,
    }


class _UnitState:
    """A worker's view of the study state: its unit's finished pieces, and every new one sent to the parent
    (which writes state.json) as soon as it is done."""

    def __init__(self, values: dict[str, Any], queue: Any) -> None:
        self.values, self.queue = dict(values), queue

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value
        self.queue.put(("put", key, value))


def exit_with_parent(poll_seconds: float = 1.0) -> None:
    """Run in each spawned process of a parallel study (workers and the queue's manager): end this process
    when the study's process is gone. A killed study (SIGTERM, SIGKILL, a closed terminal) otherwise leaves its
    workers running their units to the end, each burning a core for results nobody will read."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="nonsingular-exit-with-parent", daemon=True).start()


def _unit_keys(name: str, seed: int) -> Callable[[str], bool]:
    """Whether a state key belongs to the unit (model `name`, `seed`): kind[@tag]/name/seed[/...]."""

    def belongs(key: str) -> bool:
        parts = key.split("/")
        return len(parts) >= 3 and parts[1] == name and parts[2] == str(seed)

    return belongs


def _unit_worker(
    config_json: dict[str, Any],
    k: int,
    seed: int,
    n: int,
    values: dict[str, Any],
    cache_dir: str,
    device: str,
    threads: int,
    queue: Any,
) -> dict[str, Any]:
    """Entry point of a worker process: one (model, seed) unit (see _evaluate_unit)."""
    torch.set_num_threads(threads)
    config = StudyConfig(**config_json)
    data = load_data(config.data, seed=config.seed)
    where = torch.device(device)
    x, y = data.x_test[:n].to(where), data.y_test[:n].to(where)

    def progress(label: str, done: int, total: int) -> None:
        queue.put(("progress", label, done, total))

    state = _UnitState(values, queue)
    return _evaluate_unit(config, config.models[k], seed, data, x, y, state, Path(cache_dir), progress, where)


def _run_parallel(
    config: StudyConfig,
    units: list[tuple[int, int]],
    data: Dataset,
    n: int,
    state: StudyState,
    out_dir: Path,
    cache_dir: Path,
    progress: StudyProgress | None,
    device: torch.device,
    workers: int,
) -> dict[tuple[int, int], dict[str, Any]]:
    """The units in `workers` spawned processes; this process records their pieces in `state` as they arrive.

    Units are submitted in order (every seed of the first model first), so the cache fills as a 1-process run
    fills it. Each worker gets its share of this process's CPUs as torch threads (at least 1).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    threads = max(1, cpus // workers)
    config_json = config.model_dump(mode="json")
    context = multiprocessing.get_context("spawn")  # fork after torch's thread pools start can deadlock
    manager = SyncManager(ctx=context)
    manager.start(exit_with_parent)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=exit_with_parent)
    with manager, pool, _workers_end_on_stop(pool):  # trust: a stop ends the workers instead of awaiting them
        queue = manager.Queue()
        futures = {}
        for k, seed in units:
            belongs = _unit_keys(config.models[k].name, seed)
            values = {key: v for key, v in state.values.items() if belongs(key)}
            args = (config_json, k, seed, n, values, str(cache_dir), str(device), threads, queue)
            futures[pool.submit(_unit_worker, *args)] = (k, seed)

        def drain(block: bool) -> None:
            while True:
                try:
                    message = queue.get(timeout=0.2) if block else queue.get_nowait()
                except Empty:
                    return
                block = False
                if message[0] == "put":
                    state.put(message[1], message[2])
                elif progress is not None:
                    progress(*message[1:])

        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            drain(block=not finished)
            if stop_requested():  # trust: stop now (_workers_end_on_stop ends the workers)
                check_stop()
            for future in finished:
                if future.exception() is not None:  # e.g. an InputError: raised here, in the parent
                    for other in pending:
                        other.cancel()  # units not started yet; running ones finish (their pieces are kept)
                    drain(block=False)
                    raise future.exception()  # type: ignore[misc]
        drain(block=False)
        return {futures[f]: f.result() for f in futures}


class _ModelRun:
    """The grid evaluations of one model and seed, each recorded in the study state as soon as it is done."""

    def __init__(
        self,
        name,
        seed: int,
        model,
        x,
        y,
        config: StudyConfig,
        data: Dataset,
        state: StudyState,
        progress,
        axes: _Axes | None = None,
    ) -> None:
        self.name, self.seed, self.model, self.x, self.y = name, seed, model, x, y
        self.label = name if len(config.run_seeds) == 1 else f"{name} seed {seed}"
        self.grid, self.domain = config.grid, data.domain
        self.axes = _main_axes(config) if axes is None else axes
        self.methods = [m.value for m in config.certify.methods]
        self.state, self.progress = state, progress

    def threat(self, eps_x: float, eps_w: float, scope: Scope = Scope.PER_EXAMPLE) -> ThreatModel:
        a = self.axes
        return ThreatModel(
            eps_x=eps_x, eps_w=eps_w, weight_ball=a.ball, weight_mode=a.mode, scope=scope, domain=self.domain
        )

    def _tick(self, label: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(f"{self.label}: {label}", done, total)

    def _key(self, kind: str, ex: float, ew: float, last: str) -> str:
        kind = f"{kind}@{self.axes.tag}" if self.axes.tag else kind
        return f"{kind}/{self.name}/{self.seed}/{ex}/{ew}/{last}"

    def grid_cell(self, ex: float, ew: float, scope: Scope) -> GridCell | None:
        """The finished cell at (ex, ew, scope), or None."""
        saved = self.state.get(self._key("cell", ex, ew, scope.value))
        return None if saved is None else GridCell.from_json(saved)

    def cell(self, ex: float, ew: float, scope: Scope) -> Cell | None:
        found = self.grid_cell(ex, ew, scope)
        return None if found is None else found.cell

    def _smaller(self, ex: float, ew: float, scope: Scope) -> list[Cell]:
        """The checked cells of `scope` one grid step below (ex, ew) on each axis: threat sets inside this one.
        Their own smaller cells were carried into them already, so one step covers every nested cell."""
        xs, ws = self.axes.eps_x, self.axes.eps_w
        below = []
        if xs.index(ex) > 0:
            below.append((xs[xs.index(ex) - 1], ew))
        if ws.index(ew) > 0:
            below.append((ex, ws[ws.index(ew) - 1]))
        cells = [self.cell(a, b, scope) for a, b in below if a > 0 or b > 0]
        return [c for c in cells if c is not None and c.checked and c.robust is not None]

    def _attack_point(self, ex: float, ew: float, attack: Attack, clean_correct: Tensor) -> None:
        """Both scopes of one grid point via evaluate_cell (as `nonsingular evaluate`), then the nesting carry.

        The threat sets are nested (a larger eps contains every smaller one, and the per-example set contains the
        shared one), so a checked adversarial result of a smaller set is valid here: per example the worst is
        kept (per-example scope), the lowest-accuracy perturbation is kept (shared scope), and per-example
        examples broken by the shared perturbation count as broken. Where a smaller cell broke examples that
        this cell's own attack missed, a margin-loss restart runs first (cross-entropy saturates when the model
        collapses to one class) and is kept per example.
        """
        found: dict[Scope, GridCell] = {}
        scopes = sorted(self.grid.scopes, key=lambda s: s is Scope.SHARED)  # per-example first: shared may copy it
        for scope in scopes:
            threat = self.threat(ex, ew, scope)
            per_example = found[Scope.PER_EXAMPLE].cell if Scope.PER_EXAMPLE in found else None
            cell = evaluate_cell(self.model, self.x, self.y, threat, attack, clean_correct, None, per_example)
            own = cell.accuracy
            smaller = self._smaller(ex, ew, scope) if cell.checked and cell.robust is not None else []
            restarted = False
            if (
                scope is Scope.PER_EXAMPLE
                and cell.same_as is None
                and type(attack) is PGD  # the auto ensemble already runs margin-type (DLR) losses
                and attack.loss is Loss.CE
                and _misses(cell, smaller)
            ):
                again = evaluate_cell(
                    self.model, self.x, self.y, threat, replace(attack, loss=Loss.MARGIN), clean_correct
                )
                if again.checked and again.robust is not None:
                    restarted = True
                    cell = _with_robust(cell, cell.robust & again.robust.to(cell.robust.device))
            cell, carried = _carry(cell, smaller, scope)
            found[scope] = GridCell(self.seed, ex, ew, scope.value, cell, own, carried, restarted)
        shared = found.get(Scope.SHARED)
        pe = found.get(Scope.PER_EXAMPLE)
        if shared and pe and pe.cell.checked and shared.cell.checked and shared.cell.same_as is None:
            pe.cell, extra = _carry(pe.cell, [shared.cell], Scope.PER_EXAMPLE)
            pe.carried += extra
        for scope, record in found.items():
            self.state.put(self._key("cell", ex, ew, scope.value), record.to_json())

    def attack_cells(
        self, points, attack: Attack, clean_correct: Tensor, special: dict[tuple[float, float], Attack] | None = None
    ) -> list[dict[str, Any]]:
        """Every grid cell in both scopes (see _attack_point), with `attack` or, at a point of `special`, its
        attack; the result rows."""
        rows = []
        special = special or {}
        for i, (ex, ew) in enumerate(points):
            if any(self.state.get(self._key("cell", ex, ew, s.value)) is None for s in self.grid.scopes):
                self._attack_point(ex, ew, special.get((ex, ew), attack), clean_correct)
            for scope in sorted(self.grid.scopes, key=lambda s: s is Scope.SHARED):
                record = self.grid_cell(ex, ew, scope)
                assert record is not None
                rows.append(record.row())
            self._tick(f"{self.axes.tag} attacks".lstrip(), i + 1, len(points))
        return rows

    def quantization(self, config: StudyConfig, attack: Attack) -> dict[str, Any]:
        """The [quantization] section on this model (see study.quantization)."""
        section = config.quantization
        eps_x = config.headline.eps_x if section.eps_x is None else section.eps_x
        return quantization_analysis(
            self.model,
            self.x,
            self.y,
            section,
            eps_x,
            self.domain,
            attack,
            self.seed,
            lambda done, total: self._tick("quantization", done, total),
        )

    def scale_analysis(self, config: StudyConfig, attack: Attack, progress: StudyProgress | None) -> dict[str, Any]:
        """Layer statistics, the weight-only and joint cells at the headline eps_x in all four parametrizations
        (both scopes), and the rescaling check, on the first `scale.n_examples` examples (see study.scale)."""
        sc, hx = config.scale, config.headline.eps_x
        x, y = self.x[: sc.n_examples], self.y[: sc.n_examples]
        with torch.no_grad():
            clean_correct = self.model(x).argmax(1) == y
        scopes = sorted(self.grid.scopes, key=lambda s: s is Scope.SHARED)
        cells, accuracy = [], {}
        for k, (ball, mode) in enumerate(PARAMETRIZATIONS):
            eps_w = sc.eps_w(ball, mode)
            for ex in (0.0, hx):
                for scope in scopes:
                    threat = ThreatModel(
                        eps_x=ex, eps_w=eps_w, weight_ball=ball, weight_mode=mode, scope=scope, domain=self.domain
                    )
                    cell = evaluate_cell(self.model, x, y, threat, attack, clean_correct)
                    row = {"weight_ball": ball.value, "weight_mode": mode.value, "eps_x": ex, "eps_w": eps_w}
                    cells.append(row | {"scope": scope.value, "seed": self.seed, **_cell_fields(cell)})
                    if ex == 0 and scope is Scope.PER_EXAMPLE:
                        accuracy[f"{ball.value} {mode.value}"] = cell.accuracy
            self._tick("scale", k + 1, len(PARAMETRIZATIONS) + len(sc.factors))
        rescaling = []
        for k, c in enumerate(sc.factors):
            model = rescaled(self.model, c)
            with torch.no_grad():
                change = float((model(x) - self.model(x)).abs().max())
            moved = {}
            for ball, mode in PARAMETRIZATIONS:
                threat = ThreatModel(eps_w=sc.eps_w(ball, mode), weight_ball=ball, weight_mode=mode, domain=self.domain)
                moved[f"{ball.value} {mode.value}"] = evaluate_cell(model, x, y, threat, attack, clean_correct).accuracy
            rescaling.append({"c": c, "max_logit_change": change, "accuracy": moved})
            self._tick("scale", len(PARAMETRIZATIONS) + k + 1, len(PARAMETRIZATIONS) + len(sc.factors))
        return {
            "n_examples": len(y),
            "layers": layer_stats(self.model, x),
            "cells": cells,
            "weight_only": accuracy,
            "rescaling": rescaling,
        }

    def sanity_flags(self, cells, clean: float, headline, attack: Attack) -> list[dict[str, Any]]:
        """Sanity flags of this model and seed (recorded in the state, so a resumed study does not redo the noise
        check).

        nested: along each grid axis, and from shared to per-example scope, the larger threat set may not show
        a higher robust accuracy (the clean accuracy stands at (0, 0)); the nesting carry makes the reported
        accuracies monotone, so this flags what the carry could not repair (an unchecked cell). noise: random
        points at the headline point's per-example joint cell. gradients and train-eval: the model at the clean
        points.
        """
        key = f"flags/{self.name}/{self.seed}"
        if self.state.get(key) is not None:
            return self.state.get(key)["flags"]

        def label(ex: float, ew: float, scope: str) -> str:
            return f"{self.label}: {scope} eps_x={ex:g} eps_w={ew:g}"

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
        found = [nested_flag(accuracy, pairs), gradient_flag(self.model, self.x, self.y, self.label)]
        found.append(train_eval_flag(self.model, self.x, self.y, self.label))
        hx, hw = headline.eps_x, headline.eps_w
        cell = self.cell(hx, hw, Scope.PER_EXAMPLE)
        if cell is not None and cell.checked and cell.robust is not None:
            noise = RandomNoise(batch_size=attack.batch_size, seed=7919)
            checked = attack_and_check(self.model, self.x, self.y, self.threat(hx, hw), noise)
            if checked.passed:
                robust = cell.robust.to(checked.correct.device)
                found.append(noise_flag(label(hx, hw, Scope.PER_EXAMPLE.value), robust, checked.correct))
        flags = [f.to_json() for f in found if f is not None]
        self.state.put(key, {"flags": flags})
        return flags

    def certify_cells(self, points, clean_correct: Tensor, n_examples: int | None = None) -> list[dict[str, Any]]:
        """Certificates at the given grid points via certify (as `nonsingular certify`) on the first `n_examples`
        examples (default all), bounding only those the checked per-example attack left correct (a sound bound
        cannot certify the others); each row also holds that attack's accuracy on the same examples."""
        rows = []
        n = len(self.y) if n_examples is None else min(n_examples, len(self.y))
        tag = "" if n == len(self.y) else f"@{n}"  # state keys of whole-set certificates keep their old form
        for i, (ex, ew) in enumerate(points):
            attacked = self.cell(ex, ew, Scope.PER_EXAMPLE)
            survivors = attacked.robust if attacked is not None and attacked.checked else None
            survivors = clean_correct if survivors is None else survivors.to(self.y.device)
            survivors = survivors[:n]
            missing = [m for m in self.methods if self.state.get(self._key("cert", ex, ew, m + tag)) is None]
            if missing:
                threat = self.threat(ex, ew)
                rows_in = survivors.nonzero().flatten()
                for method in missing:
                    if len(rows_in) == 0:
                        record = Certificate(threat.describe(), method, 0.0, 0, n, 0, 0.0)
                    else:
                        report = certify(self.model, self.x[rows_in], self.y[rows_in], threat, [method])
                        record = Certificate.of(report.methods[method], threat, n)
                    self.state.put(self._key("cert", ex, ew, method + tag), record.to_json())
            for method in self.methods:
                record = Certificate.from_json(self.state.get(self._key("cert", ex, ew, method + tag)))
                rows.append(
                    {
                        "seed": self.seed,
                        "eps_x": ex,
                        "eps_w": ew,
                        "method": method,
                        "certified_accuracy": record.certified_accuracy,
                        "attacked_accuracy": float(survivors.float().mean()),
                        "examples": n,
                        "bounded_examples": record.bounded_examples,
                        "seconds": record.seconds,
                    }
                )
            self._tick("certificates", i + 1, len(points))
        return rows


@dataclass
class GridCell:
    """One evaluated grid cell of one model and seed, as the study records it.

    Attributes:
        seed: the training and attack seed.
        eps_x, eps_w, scope: the cell.
        cell: the evaluated cell (evaluate.Cell) after the nesting carry: its accuracy and robust examples
            include checked results carried from smaller threat sets and the margin restart.
        own_accuracy: the accuracy of this cell's own first attack, before any carry or restart.
        carried: examples (per-example scope; the shared scope: 1 when a smaller cell's perturbation was kept)
            that only a smaller cell's checked result broke.
        margin_restart: a margin-loss restart ran (the cross-entropy attack missed examples a smaller set broke).
    """

    seed: int
    eps_x: float
    eps_w: float
    scope: str
    cell: Cell
    own_accuracy: float | None
    carried: int = 0
    margin_restart: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "cell"},
            "cell": self.cell.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GridCell:
        """Raises: ValueError: not a grid cell record."""
        if set(data) != {f.name for f in fields(cls)}:
            raise ValueError(f"not a study grid cell: keys {sorted(data)}")
        return cls(**{**data, "cell": Cell.from_json(data["cell"])})

    def row(self) -> dict[str, Any]:
        """The fields results.json keeps per grid cell."""
        return {
            "seed": self.seed,
            "eps_x": self.eps_x,
            "eps_w": self.eps_w,
            "scope": self.scope,
            "accuracy": self.cell.accuracy,
            "checked": self.cell.checked,
            "paths": self.cell.paths,
            "own_accuracy": self.own_accuracy,
            "carried": self.carried,
            "margin_restart": self.margin_restart,
        }


def _cell_fields(cell: Cell) -> dict[str, Any]:
    return {"accuracy": cell.accuracy, "checked": cell.checked}


def _with_robust(cell: Cell, robust: Tensor) -> Cell:
    return replace(cell, robust=robust, accuracy=float(robust.float().mean()))


def _misses(cell: Cell, smaller: list[Cell]) -> bool:
    """Whether a smaller cell's checked attack broke an example this cell's attack left standing."""
    return cell.robust is not None and any(
        bool((cell.robust & ~other.robust.to(cell.robust.device)).any()) for other in smaller
    )


def _carry(cell: Cell, smaller: list[Cell], scope: Scope) -> tuple[Cell, int]:
    """`cell` with the checked results of the nested `smaller` cells carried in; (cell, carried count)."""
    if not smaller or cell.robust is None or not cell.checked:
        return cell, 0
    if scope is Scope.SHARED:  # one perturbation for all: keep the one with the lowest accuracy
        worst = min(smaller, key=lambda c: float(c.robust.float().mean()))
        if float(worst.robust.float().mean()) < float(cell.robust.float().mean()):
            return _with_robust(cell, worst.robust.to(cell.robust.device).clone()), 1
        return cell, 0
    robust = cell.robust.clone()
    for other in smaller:
        robust &= other.robust.to(robust.device)
    carried = int((cell.robust & ~robust).sum())
    return (_with_robust(cell, robust), carried) if carried else (cell, 0)


def _radii(model, x, y, config: StudyConfig, data: Dataset, attack: Attack, progress, name: str) -> dict[str, Any]:
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
