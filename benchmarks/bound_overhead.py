"""Fixed cost of one bound call: microseconds per `margin_bounds` call with the traced-graph cache
(bounds/plan_cache.py) and without it (every call traces, as before the cache), side by side in one process.

    .venv/bin/python -m benchmarks.bound_overhead [--batches 1 256] [--methods ibp crown] [--rounds 5]

One thread, float32, an untrained seeded MLP 784-100-100-10 (three Linear layers), joint threat eps_x 0.01,
eps_w 0.001 absolute element-wise, under `torch.no_grad()`, CPU time of the process (the machine is shared: wall
time would measure the other jobs). The two variants alternate round by round and each
keeps its fastest round, so that a loaded machine slows both alike: the ratio is the figure, not the absolute
microseconds.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from nonsingular import ThreatModel
from nonsingular.bounds import margin_bounds
from nonsingular.bounds.plan_cache import PLAN_CACHE


def _per_call(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, method: str) -> float:
    """CPU seconds per call, over as many calls as fill about 0.2 CPU s (at least 2)."""
    margin_bounds(model, x, y, threat, method)  # warm (and fill the cache when it is on)
    calls, start = 0, time.process_time()
    while calls < 2 or time.process_time() - start < 0.2:
        margin_bounds(model, x, y, threat, method)
        calls += 1
    return (time.process_time() - start) / calls


def measure(batch: int, method: str, rounds: int) -> tuple[float, float]:
    """(seconds per call without the cache, with it), each the fastest of `rounds` alternating rounds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU())
    model.append(nn.Linear(100, 10)).eval()
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    threat = ThreatModel(eps_x=0.01, eps_w=0.001)
    best = {False: float("inf"), True: float("inf")}
    with torch.no_grad():
        for _ in range(rounds):
            for cached in (False, True):
                PLAN_CACHE.enabled = cached
                best[cached] = min(best[cached], _per_call(model, x, y, threat, method))
    PLAN_CACHE.enabled = True
    return best[False], best[True]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--methods", nargs="+", default=["ibp", "crown"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'method':7} {'batch':>5} {'traced every call':>18} {'cached plan':>12} {'saved':>9} {'ratio':>6}")
    for method in args.methods:
        for batch in args.batches:
            before, after = measure(batch, method, args.rounds)
            print(
                f"{method:7} {batch:5d} {before * 1e6:16.0f}us {after * 1e6:10.0f}us "
                f"{(before - after) * 1e6:7.0f}us {before / after:6.2f}"
            )


if __name__ == "__main__":
    main()
