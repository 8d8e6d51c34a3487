"""Data-parallel training under torch.distributed: each rank's share of a batch, the DDP wrapper, and sums of
per-epoch numbers over ranks. In one process every function here is the identity (or a no-op).

Every rank draws the same global shuffle, so the global batches are those of a 1-process run; each rank trains
on a contiguous share of every batch, DistributedDataParallel averages the gradients, and `global_mean` weighs
each rank's batch-mean loss so that the average is the global batch mean even when shares are unequal.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..runtime import distributed as dist

__all__ = ["any_rank", "batch_share", "check_batches", "global_mean", "inner", "sum_over_ranks", "wrap"]


def batch_share(batch: Tensor) -> tuple[Tensor, int]:
    """This rank's contiguous share of a global batch (first ranks take one more when it does not divide),
    and the position of its first row in the batch (what seeds per-example random starts)."""
    size, extra = divmod(len(batch), dist.world_size())
    r = dist.rank()
    first = r * size + min(r, extra)
    return batch[first : first + size + (r < extra)], first


def check_batches(n_train: int, batch_size: int) -> None:
    """Refuse batches with fewer examples than ranks: an empty share cannot join the attack's collectives.

    Raises:
        ValueError: the first or the last batch is smaller than the number of processes.
    """
    world = dist.world_size()
    last = n_train - (-(-n_train // batch_size) - 1) * batch_size
    if min(batch_size, last) < world:
        raise ValueError(
            f"{world} processes need at least {world} examples in every batch, but batch_size={batch_size} "
            f"with {n_train} training examples leaves a last batch of {last}; change --batch-size or --n-train"
        )


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` when distributed (it averages gradients in backward), else model.

    Buffers are broadcast from rank 0 at every wrapped forward (DDP's default), so BatchNorm running
    statistics stay identical on all ranks; what they are computed from is the objectives' business.
    """
    if not dist.is_distributed():
        return model
    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model)


def inner(model: nn.Module) -> nn.Module:
    """The module under a DDP wrapper: attacks and bounds run on it, so no gradient sync or buffer broadcast
    happens inside an inner maximisation (a DDP forward whose backward never comes would stall the reducer)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def global_mean(loss: Tensor, n_local: int, n_global: int) -> Tensor:
    """Scale this rank's batch-mean loss so that DDP's average over ranks is the mean over the global batch."""
    if not dist.is_distributed():
        return loss
    return loss * (n_local * dist.world_size() / n_global)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` holds on some rank (all ranks must then take the same branch)."""
    if not dist.is_distributed():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce_max_(value)
    return bool(value.item())


def sum_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum each number over ranks (in float64; every rank must pass the same keys)."""
    if not dist.is_distributed() or not values:
        return values
    keys = sorted(values)
    flat = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce_sum_([flat])
    summed = dict(zip(keys, flat.tolist(), strict=True))
    return {k: summed[k] for k in values}  # the caller's order (the CSV's columns)
