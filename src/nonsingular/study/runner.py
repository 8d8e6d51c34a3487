"""Run a study: plan its units, run them on an executor, record every finished piece, write the report.

The runner owns the order of things, not the work: `units` says what a (model, seed) unit does and
`runtime.executors` where it runs (this process, `--workers N` processes, a Ray cluster). Every finished piece
of evaluation reaches this process as a message and is recorded in `<out>/state.json` (atomically) at once, and
every newly trained model is written to the model cache here, so a study stopped at any point resumes where it
stopped, with any executor, with the same numbers.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..datasets import Dataset, load_data
from ..errors import InputError, describe
from ..models import build_model
from ..models.checkpoint import check_output_path, save_checkpoint
from ..runtime import distributed as dist
from ..runtime.executors import Executor, make_executor, report_units, run_units
from ..runtime.signals import check_stop, stop_requested
from ..training.trainer import architecture_spec
from .cache import StudyState, study_fingerprint
from .cells import GridCell
from .model_run import StudyProgress
from .model_units import train_config
from .records import ModelResult, StudyResults, UnitResult
from .report import write_report
from .scale import rescaled
from .schema import StudyConfig
from .units import StudyJob, TrainedModel, evaluate_name, evaluate_unit, plan_units

__all__ = ["GridCell", "StudyState", "check_study", "run_study"]

log = logging.getLogger(__name__)


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
    executor: Executor | None = None,
) -> tuple[Path, StudyResults]:
    """Run (or resume) the study on `device` (default cpu); returns the path of report.html and the typed results
    (`to_json()`: results.json's content before the report adds its summary and verdicts).

    Every model is trained and evaluated once per seed of `config.run_seeds` (the seed sets initialisation,
    batch order and the attack's random starts; the data split stays `config.seed`). The (model, seed) units run
    on `executor` (default: this process, or with `workers` > 1 that many local processes, each with its share
    of this process's CPUs as torch threads); this process keeps the state file and the model cache (every
    finished piece is recorded as it arrives, so a stopped study resumes) and writes the report. The results do
    not depend on the executor: every unit is seeded by its own seed.
    """
    device = torch.device("cpu") if device is None else device
    started = time.perf_counter()
    data = load_data(config.data, seed=config.seed)
    check_study(config, data, out_dir, cache_dir)
    n = len(data.y_test) if config.n_examples is None else min(config.n_examples, len(data.y_test))
    state = StudyState(out_dir / "state.json", study_fingerprint(config))
    attack = config.attack.build(config.run_seeds[0])
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    remote = workers > 1 or (executor is not None and executor.kind != "inline")
    if remote and dist.is_distributed():
        raise InputError("--workers > 1 and --executor ray run their own processes: do not combine them with torchrun")
    units_done = _run_units(config, data, n, state, cache_dir, progress, device, workers, executor)
    models = {
        entry.name: ModelResult.of_units(
            entry.objective, entry.options, [units_done[evaluate_name(entry.name, s)] for s in config.run_seeds]
        )
        for entry in config.models
    }
    results = StudyResults(
        name=config.name,
        config=config.model_dump(mode="json"),
        data=data.describe(),
        n_examples=n,
        seeds=config.run_seeds,
        attack=repr(attack),
        headline_attack=(
            repr(config.attack.build(config.run_seeds[0], headline=True)) if config.attack.headline_kind else None
        ),
        attack_budget=attack.budget(),
        grid=config.grid.model_dump(mode="json"),
        headline=config.headline.model_dump(mode="json"),
        models=models,
        seconds=time.perf_counter() - started,
        versions={"nonsingular": __version__, "torch": torch.__version__, "python": platform.python_version()},
    )
    report = write_report(results, out_dir) if dist.rank() == 0 else out_dir / "report.html"
    return report, results


def _run_units(
    config: StudyConfig,
    data: Dataset,
    n: int,
    state: StudyState,
    cache_dir: Path,
    progress: StudyProgress | None,
    device: torch.device,
    workers: int,
    executor: Executor | None,
) -> dict[str, UnitResult]:
    """Every unit of the study on `executor` (made from `workers` and closed here when not given); the
    evaluation units' results by name."""
    own = executor is None
    if executor is None:  # one (model, seed) has nothing to run beside it: no processes to start
        single = len(config.models) * len(config.run_seeds) == 1
        executor = make_executor("local", 1 if single else workers)
    # An executor that gives each unit its own GPU numbers it from 0 in the unit's process.
    where = torch.device(device.type) if executor.assigns_devices else device
    job = StudyJob.of(config, data, n, cache_dir, where)
    units = plan_units(config, data, job, state.values, device)

    def on_message(unit: str, message: Any) -> None:
        if message[0] == "put":
            state.put(message[1], message[2])
        elif progress is not None:
            progress(*message[1:])

    def on_result(unit: str, result: Any) -> None:
        if isinstance(result, TrainedModel) and result.save_to is not None and dist.rank() == 0:
            save_checkpoint(result.save_to, result.model, result.metadata)

    evaluations = {u.name for u in units if u.fn is evaluate_unit}  # what the results need; models go when used

    def between_units() -> None:
        """Between units' events: a SIGINT/SIGTERM stop request ends the run here (the executor's close then
        ends running workers, whose finished pieces are already in the state)."""
        if stop_requested():
            check_stop()

    try:
        keep = evaluations.__contains__
        on_progress = report_units(progress) if progress is not None else None
        done = run_units(executor, units, on_message, on_result, on_progress, between_units, keep=keep)
    finally:
        if own:
            executor.close()
    return done
