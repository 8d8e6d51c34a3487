"""One convolution with a kernel per example, three ways, beside the same convolution with one shared kernel:
the arithmetic behind the per-example joint attack's convolution cost (BENCHMARKS.md).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.conv_per_example [--batch 128] [--repeats 5]

Forward plus backward with the input and kernel gradients, CPU milliseconds of this process (fastest of
`repeats`), for the two convolutions of SmallCNN on MNIST shapes: dense (one kernel), grouped (one group of
channels per example, what `attacks/perturbation.py` runs) and unfold + batched matmul (the same products as a
bmm over examples).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

#: (in channels, out channels, side, stride, padding) of SmallCNN's convolutions on 1x28x28 inputs.
LAYERS = [(1, 16, 28, 1, 1), (16, 32, 28, 2, 1)]


def grouped(h: torch.Tensor, w: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    n = h.shape[0]
    out = F.conv2d(h.reshape(1, -1, *h.shape[2:]), w.reshape(-1, *w.shape[2:]), None, stride, pad, 1, n)
    return out.reshape(n, w.shape[1], *out.shape[2:])


def unfold_bmm(h: torch.Tensor, w: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    n, k = h.shape[0], w.shape[-1]
    cols = F.unfold(h, k, padding=pad, stride=stride)  # (n, C_in k k, positions)
    side = (h.shape[-1] + 2 * pad - k) // stride + 1
    return torch.bmm(w.reshape(n, w.shape[1], -1), cols).reshape(n, w.shape[1], side, side)


def dense(h: torch.Tensor, w: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    return F.conv2d(h, w, None, stride, pad)


def timed(fn: Callable[..., torch.Tensor], h: torch.Tensor, w: torch.Tensor, args: tuple[int, int], n: int) -> float:
    best = float("inf")
    for _ in range(n):
        start = time.process_time()
        out = fn(h, w, *args)
        out.backward(torch.ones_like(out))
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("| convolution | dense (one kernel) | grouped (kernel per example) | unfold + bmm (kernel per example) |")
    print("| --- | --- | --- | --- |")
    for c_in, c_out, side, stride, pad in LAYERS:
        h = torch.randn(args.batch, c_in, side, side, requires_grad=True)
        per_example = torch.randn(args.batch, c_out, c_in, 3, 3, requires_grad=True)
        shared = torch.randn(c_out, c_in, 3, 3, requires_grad=True)
        ms = [
            1e3 * timed(fn, h, w, (stride, pad), args.repeats)
            for fn, w in ((dense, shared), (grouped, per_example), (unfold_bmm, per_example))
        ]
        print(f"| {c_in} -> {c_out}, 3x3 stride {stride}, {side}x{side} | " + " | ".join(f"{t:.1f}" for t in ms) + " |")


if __name__ == "__main__":
    main()
