"""Timing and memory helpers: warm-up, repeats, medians; peak memory measured in a fresh process."""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> tuple[float, Any]:
    """Median wall time of fn() over `repeats` runs after `warmup` runs; returns (seconds, last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _child(target: Callable[..., dict[str, Any]], args: tuple, queue: mp.Queue) -> None:
    import torch

    torch.set_num_threads(int(args[-1]))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        out = target(*args[:-1])
        out["peak_rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        queue.put(out)
    except Exception as err:  # a failing peer is reported, not a crash of the whole run
        queue.put({"error": f"{type(err).__name__}: {err}"})


def in_fresh_process(target: Callable[..., dict[str, Any]], *args: Any, threads: int = 2) -> dict[str, Any]:
    """Run target(*args) in a spawned process; adds peak_rss_mb (growth of max RSS over the process's baseline)."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, (*args, threads), queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out
