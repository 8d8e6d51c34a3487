"""Resumable training state inside a checkpoint: optimiser tensors as `extra` tensors, the rest as JSON.

Every random stream of an epoch is reseeded from (seed, epoch), so the model, the optimiser state and the
number of finished epochs are all a resumed run needs to continue bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["derive_seed", "optimizer_from_tensors", "optimizer_to_tensors"]

_PREFIX = "optim"


def derive_seed(*key: int) -> int:
    """A 63-bit seed from integers, independent across keys (SeedSequence hashing, not seed + offset)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split optimizer.state_dict()["state"] into tensors ("optim/<param>/<key>") and JSON-able values."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            name = f"{_PREFIX}/{index}/{key}"
            if isinstance(value, Tensor):
                tensors[name] = value
            else:
                scalars[name] = value  # e.g. a momentum buffer that is still None
    return tensors, scalars


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], scalars: dict[str, Any]
) -> None:
    """Load what `optimizer_to_tensors` saved into `optimizer` (its param_groups are kept as configured)."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *scalars.items()]:
        prefix, _, rest = name.partition("/")
        if prefix != _PREFIX:
            continue
        index, _, key = rest.partition("/")
        state.setdefault(int(index), {})[key] = value
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)
