"""torch.distributed helpers: launch detection, batch-aligned sharding, gathering, gradient all-reduce.

Launch with torchrun (`torchrun --nproc-per-node 2 -m nonsingular evaluate ...`): the environment it sets
(RANK, WORLD_SIZE, MASTER_ADDR, ...) is read by `init_from_env`. Without it everything runs in one process and
these helpers are no-ops. Collectives carry a bounded timeout so a dead rank ends the job instead of hanging it.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_reduce_max_",
    "all_reduce_sum_",
    "gather_cat",
    "init_from_env",
    "is_distributed",
    "rank",
    "shard_range",
    "shutdown",
    "world_size",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(device: torch.device | None = None, timeout_s: float = 300.0) -> bool:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA). False when not launched so."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shard_range(n: int, batch_size: int) -> tuple[int, int]:
    """This rank's contiguous share [start, stop) of n examples.

    With at least as many batches of `batch_size` as ranks, the share is made of whole batches, the ones a
    single process would form, so each rank computes exactly what one process computes on them (bit for bit).
    With fewer batches than ranks, the rows are split evenly instead (every rank gets work; attack random
    starts are keyed by example index, so the results equal one process's up to float rounding in the
    smaller matrix products). A rank gets an empty share only when n is smaller than the number of ranks.
    """
    world, r = world_size(), rank()
    n_batches = -(-n // batch_size)
    if n_batches < world:
        size, extra = divmod(n, world)
        first = r * size + min(r, extra)
        return first, first + size + (1 if r < extra else 0)
    per_rank, extra = divmod(n_batches, world)
    first = r * per_rank + min(r, extra)
    count = per_rank + (1 if r < extra else 0)
    return min(first * batch_size, n), min((first + count) * batch_size, n)


def all_reduce_sum_(tensors: Sequence[Tensor]) -> None:
    """Sum tensors in place across ranks (one flattened collective)."""
    if not is_distributed() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def all_reduce_max_(tensor: Tensor) -> None:
    """Element-wise max across ranks, in place."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


def gather_cat(part: Tensor, start: int, n: int) -> Tensor:
    """Reassemble per-example rows sharded by `shard_range` into the full (n, ...) tensor on every rank."""
    if not is_distributed():
        return part
    full = torch.zeros(n, *part.shape[1:], dtype=torch.float64, device=part.device)
    full[start : start + len(part)] = part.to(torch.float64)
    # Every rank fills its own rows and leaves zeros elsewhere: a sum gives every rank the whole tensor.
    dist.all_reduce(full)
    return full.to(part.dtype)


def barrier() -> None:
    """Wait for every rank (bounded by the process group's timeout); a no-op in one process."""
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group after a successful run: release what still holds it, wait for every rank, then
    destroy it.

    A rank that exits while another still talks to it can abort in gloo's destructor ("terminate called
    without an active exception"); the barrier makes every rank finish its collectives first. The garbage
    collection comes first because a DistributedDataParallel wrapper is a reference cycle: after training it
    stays alive until the collector happens to run, and its reducer keeps the process group, gloo's threads and
    their last buffers alive past `destroy_process_group` into interpreter finalization, where tearing them down
    can abort the process (SIGABRT). Whether the collector ran first depends on how much a rank allocated after
    training, so the rank that returns at once (not rank 0) was the exposed one.
    """
    if is_distributed():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
