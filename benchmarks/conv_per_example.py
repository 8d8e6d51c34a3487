"""One convolution with a kernel per example, several ways, beside the same convolution with one shared kernel,
and the per-example joint attack through each of the library's paths: the arithmetic behind the per-example
joint attack's convolution cost (BENCHMARKS.md).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.conv_per_example [--batch 128] [--repeats 5]

Layers: forward plus backward with the input and kernel gradients, CPU milliseconds of this process (fastest
of `repeats`), for the convolutions of SmallCNN and LeNet on MNIST shapes: dense (one kernel, input gradient
only: what input PGD pays), grouped (one group of channels per example, through autograd: the generic path),
the same in channels-last, unfold + batched matmul, and `attacks.per_example_conv` (the path the attack takes).

Attacks: PGD (10 steps, eps_x 0.02, eps_w 0.0005, batch `--batch`) on SmallCNN and LeNet, CPU seconds of this
process, fastest of `repeats`, the variants taking turns in one process: input-only, then joint per-example
through the generic grouped convolution, with the op only, with the empty-batch forward only, and with both.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from nonsingular import PGD, ThreatModel
from nonsingular.attacks import per_example_conv, perturbation
from nonsingular.models import LeNet, SmallCNN

#: (in channels, out channels, side, stride, padding, kernel) of SmallCNN's and LeNet's convolutions (1x28x28).
LAYERS = [(1, 16, 28, 1, 1, 3), (16, 32, 28, 2, 1, 3), (1, 6, 28, 1, 2, 5), (6, 16, 14, 1, 2, 5)]


def grouped(conv: nn.Conv2d, h: torch.Tensor, d: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    n, w = h.shape[0], conv.weight + d
    folded, kernel = h.reshape(1, -1, *h.shape[2:]), w.reshape(-1, *w.shape[2:])
    if channels_last:
        folded = folded.contiguous(memory_format=torch.channels_last)
        kernel = kernel.contiguous(memory_format=torch.channels_last)
    out = F.conv2d(folded, kernel, None, conv.stride, conv.padding, 1, n)
    return out.reshape(n, w.shape[1], *out.shape[2:]) + conv.bias.reshape(-1, 1, 1)  # type: ignore[union-attr]


def unfold_bmm(conv: nn.Conv2d, h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    n, w, k = h.shape[0], conv.weight + d, conv.kernel_size[0]
    pad, stride = int(conv.padding[0]), conv.stride[0]
    cols = F.unfold(h, k, padding=pad, stride=stride)  # (n, C_in k k, positions)
    side = (h.shape[-1] + 2 * pad - k) // stride + 1
    out = torch.baddbmm(conv.bias.reshape(1, -1, 1), w.reshape(n, w.shape[1], -1), cols)  # type: ignore[union-attr]
    return out.reshape(n, w.shape[1], side, side)


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        out = fn()
        torch.autograd.backward(out, torch.ones_like(out))
        best = min(best, time.process_time() - start)
    return best


def layers(batch: int, repeats: int) -> None:
    print("| convolution | dense | grouped | grouped channels-last | unfold + bmm | per_example_conv |")
    print("| --- | --- | --- | --- | --- | --- |")
    for c_in, c_out, side, stride, pad, k in LAYERS:
        conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad)
        h = torch.randn(batch, c_in, side, side).relu().requires_grad_()
        d = (1e-3 * torch.randn(batch, c_out, c_in, k, k)).requires_grad_()
        weight = conv.weight.detach()
        variants: list[Callable[[], torch.Tensor]] = [
            partial(F.conv2d, h, weight, conv.bias, stride, pad),
            partial(grouped, conv, h, d),
            partial(grouped, conv, h, d, channels_last=True),
            partial(unfold_bmm, conv, h, d),
            partial(per_example_conv.per_example_conv2d, conv, h, d),
        ]
        ms = [1e3 * timed(fn, repeats) for fn in variants]
        name = f"{c_in} -> {c_out}, {k}x{k} stride {stride}, {side}x{side}"
        print(f"| {name} | " + " | ".join(f"{t:.1f}" for t in ms) + " |")


def attacks(batch: int, repeats: int) -> None:
    supports, replaces = per_example_conv.supports, perturbation.WeightBlock.replaces_output
    joint = ThreatModel(eps_x=0.02, eps_w=0.0005)
    variants = {
        "input-only": (ThreatModel(eps_x=0.02), supports, replaces),
        "joint, generic grouped": (joint, lambda _m: False, lambda _b: False),
        "joint, op": (joint, supports, lambda _b: False),
        "joint, empty-batch forward": (joint, lambda _m: False, replaces),
        "joint, op + empty-batch forward": (joint, supports, replaces),
    }
    attack = PGD(steps=10, batch_size=batch)
    print("| model | " + " | ".join(variants) + " |")
    print("| --- |" + " --- |" * len(variants))
    for name, cls in (("SmallCNN", SmallCNN), ("LeNet", LeNet)):
        torch.manual_seed(0)
        model = cls((1, 28, 28), 10, 0.5, 0.29).eval()
        x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = model(x).argmax(1)
        best = dict.fromkeys(variants, float("inf"))
        try:
            for r in range(repeats + 1):  # the first round warms up
                for key, (threat, sup, rep) in variants.items():
                    per_example_conv.supports = sup  # type: ignore[assignment]
                    perturbation.WeightBlock.replaces_output = rep  # type: ignore[method-assign,assignment]
                    start = time.process_time()
                    attack(model, x, y, threat)
                    if r:
                        best[key] = min(best[key], time.process_time() - start)
        finally:
            per_example_conv.supports = supports
            perturbation.WeightBlock.replaces_output = replaces  # type: ignore[method-assign]
        base = best["input-only"]
        print(f"| {name} | " + " | ".join(f"{1e3 * s:.0f} ms ({base / s:.2f}x)" for s in best.values()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers(args.batch, args.repeats)
    print()
    attacks(args.batch, args.repeats)


if __name__ == "__main__":
    main()
