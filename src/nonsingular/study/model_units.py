"""Train one model of a study with the library's trainer: the study's shared settings, then the model's own."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from torch import nn

from ..datasets import Dataset
from ..errors import InputError, describe
from ..training import TrainConfig, Trainer, TrainEvent
from .schema import ModelEntry, StudyConfig

__all__ = ["train_config", "train_for_study"]


def train_config(config: StudyConfig, entry: ModelEntry, seed: int | None = None) -> TrainConfig:
    """The TrainConfig of `entry`: study data and split seed, the training seed (default the study's `seed`), the
    architecture, [training], then the entry's options.

    The per-epoch robust evaluation is off (eval_steps = 0): the study evaluates every model itself.
    """
    arch = dict(config.architecture)
    name = arch.pop("name", "mlp")
    fields: dict[str, Any] = {
        "data": config.data,
        "data_seed": config.seed,
        "seed": config.seed if seed is None else seed,
        "architecture": name,
        "eval_steps": 0,
    }
    if "widths" in arch:
        fields["widths"] = arch.pop("widths")
    if arch:
        fields["arch_options"] = arch
    fields.update(config.training)
    fields.update(entry.options)
    fields["objective"] = entry.objective
    try:
        return TrainConfig(**fields)
    except ValueError as err:
        raise InputError(f"model '{entry.name}': {describe(err)}") from None


def train_for_study(
    config: StudyConfig,
    entry: ModelEntry,
    data: Dataset,
    progress: Callable[[str, int, int], None] | None,
    device: str = "cpu",
    seed: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train `entry` in memory on `device`; returns the model (eval mode) and its checkpoint metadata (with
    seconds). The device is not part of the model's cache key: it changes where, not what, is trained."""
    cfg = train_config(config, entry, seed).model_copy(update={"device": device})

    def report(event: TrainEvent) -> None:
        if progress is not None:
            done = (event.epoch - 1) * event.steps + event.step
            label = entry.name if seed is None else f"{entry.name} seed {seed}"
            progress(f"{label}: training", done, event.epochs * event.steps)

    t0 = time.perf_counter()
    result = Trainer(cfg, paths=None, data=data, callback=report).fit()
    metadata = dict(result.metadata)
    metadata.setdefault("training", {})
    metadata["training"] = {**metadata["training"], "seconds": time.perf_counter() - t0}
    return result.model.eval(), metadata
