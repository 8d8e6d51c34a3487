"""Training cost: seconds per epoch of each objective on the digits MLP 64-256-256-10, relative to standard.

Same data, batch size (64), model and inner attack steps (7) for every objective; the per-epoch robust
evaluation is off, so only training is timed. The median over epochs after the first (warm-up) is reported.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from nonsingular.datasets import load_digits
from nonsingular.training import TrainConfig, Trainer, TrainEvent, objective_names

from .timing import bench_device

EPOCHS = 4


def epoch_times() -> dict[str, Any]:
    data = load_digits()
    out: dict[str, Any] = {}
    for name in objective_names():
        stamps: list[float] = []

        def on_event(event: TrainEvent, stamps: list[float] = stamps) -> None:
            if event.kind == "epoch":
                stamps.append(time.perf_counter())

        config = TrainConfig(objective=name, epochs=EPOCHS, eval_steps=0, device=str(bench_device()))
        start = time.perf_counter()
        Trainer(config, paths=None, data=data, callback=on_event).fit()
        durations = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
        out[name] = statistics.median(durations[1:])
    return out
