"""Memory budgets that hold when the machine has less than the budget: a computation that runs out of memory
retries with half the budget (smaller chunks) and, below a floor, fails with one line instead of being killed.

Why retry rather than measure: the bound engine sizes its chunks from a budget in MiB (bounds/engine.py), but
what the process may still allocate depends on everything else alive in it, on the allocator, and on limits
such as RLIMIT_AS or a container's cgroup that no portable call reports. An allocation beyond such a limit fails
inside torch (RuntimeError "can't allocate memory" on CPU, torch.OutOfMemoryError on CUDA) or Python
(MemoryError); all three leave the process alive, so halving the budget and running the chunk again is safe,
and the bounds do not depend on the chunking (up to float64 rounding: about 1e-15).
(A cgroup's out-of-memory killer, unlike an address-space limit, kills without an exception; only a budget
that fits avoids it: set --bound-memory-mb below the container's limit.)
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import TypeVar

import torch

from ..errors import ResourceError

__all__ = ["MIN_BUDGET_MB", "is_out_of_memory", "within_memory"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The smallest budget a computation is retried with, MiB.
MIN_BUDGET_MB = 1.0


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is a failed allocation (Python's MemoryError, torch's CPU or CUDA allocator)."""
    if isinstance(err, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def within_memory(run: Callable[[float], T], memory_mb: float, what: str, min_mb: float = MIN_BUDGET_MB) -> T:
    """run(budget_mb), retried with half the budget each time an allocation fails, down to `min_mb`.

    Raises:
        ResourceError: it failed even at `min_mb` (one line naming `what` and the budgets tried).
    """
    budget = memory_mb
    while True:
        failed = False
        try:
            return run(budget)
        except (MemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            failed = True  # retried below, once the exception (and the tensors its frames hold) is gone
        if failed:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if budget / 2 < min_mb:
                raise ResourceError(
                    f"{what} ran out of memory even with a {budget:g} MiB budget (from {memory_mb:g} MiB); "
                    "use fewer examples per batch or a machine with more memory"
                )
            log.warning("%s ran out of memory with a %g MiB budget: retrying with %g MiB", what, budget, budget / 2)
            budget /= 2
