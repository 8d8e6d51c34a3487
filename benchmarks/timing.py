"""Timing and memory helpers: warm-up, repeats, medians; peak memory measured in a fresh process."""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def bench_device() -> torch.device:
    """The device benchmarks run on: $NONSINGULAR_BENCH_DEVICE (set by benchmarks.run), else CUDA when present."""
    name = os.environ.get("NONSINGULAR_BENCH_DEVICE", "auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # CUDA kernels run asynchronously: time finished work only


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> tuple[float, Any]:
    """Median wall time of fn() over `repeats` runs after `warmup` runs; returns (seconds, last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        result = fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _child(target: Callable[..., dict[str, Any]], args: tuple, queue: mp.Queue) -> None:
    torch.set_num_threads(int(args[-1]))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        out = target(*args[:-1])
        out["peak_rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        if bench_device().type == "cuda":
            out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
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
