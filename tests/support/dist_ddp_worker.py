"""A torchrun worker for tests/test_distributed.py: after a DistributedDataParallel step, `shutdown` must release
the wrapper (a reference cycle that keeps the process group alive) before the interpreter finalizes."""

import gc
import weakref

import torch
from torch import nn

from nonsingular.runtime import distributed as dist
from nonsingular.training import parallel

gc.disable()  # the collector must not run by chance: only shutdown may release the wrapper
dist.init_from_env(timeout_s=60)


def train_step() -> weakref.ref:
    model = parallel.wrap(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), torch.device("cpu"))
    model(torch.randn(3, 4)).sum().backward()
    return weakref.ref(model)


wrapper = train_step()
alive, rank = wrapper() is not None, dist.rank()
dist.shutdown()
print(f"rank {rank}: wrapper alive after training {alive}, after shutdown {wrapper() is not None}", flush=True)
