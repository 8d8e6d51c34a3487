"""A torchrun worker for tests/runtime/test_distributed.py: rank 1 dies, rank 0 must fail instead of hanging."""

import os
import sys

import torch

from nonsingular.runtime import distributed as dist

dist.init_from_env(timeout_s=float(sys.argv[1]))
if dist.rank() == 1:
    os._exit(3)
dist.all_reduce_sum_([torch.ones(3)])
print("rank 0 finished a collective without its peer", flush=True)
