"""Peak resident memory and CPU time of one CROWN call, with glibc's default allocator or a fixed mmap threshold
(what `nonsingular certify --release-memory` sets): the allocator's retention against the `memory_mb` budget.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.crown_memory --model mlp --width 2048 [--threshold 1048576]
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.crown_memory --model smallcnn --n-examples 10 [--threshold ...]

Run each setting in its own process (peak RSS is the process's). mnist-sample, float64, `torch.no_grad()`, one
thread, default 256 MiB budget. mlp: a seeded untrained MLP 784-W-W-10 under eps_x 0.01, 16 examples by default.
smallcnn: SmallCNN trained two passes over the first 4,000 training examples (Adam, seed 0), weight threat
eps_w 0.001 with eps_x 0. Prints CPU seconds of the call, RSS before it and the peak, and the bounds' sum (to
see that settings do not change the bounds).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from nonsingular import MLP, ThreatModel
from nonsingular.bounds import margin_bounds
from nonsingular.datasets import Dataset, load_data
from nonsingular.models import SmallCNN
from nonsingular.runtime.allocator import limit_heap_retention


def _smallcnn(data: Dataset) -> torch.nn.Module:
    model = SmallCNN(data.input_shape, 10, data.mean, data.std)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data.x_train[:4000], data.y_train[:4000]
    for _ in range(2):
        for i in range(0, len(y), 100):
            loss = F.cross_entropy(model(x[i : i + 100]), y[i : i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "smallcnn"], default="mlp")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--n-examples", type=int, default=None)
    parser.add_argument("--threshold", type=int, default=0, help="bytes; 0 keeps glibc's dynamic threshold")
    args = parser.parse_args()
    if args.threshold:
        print(f"mmap threshold {args.threshold} applied: {limit_heap_retention(args.threshold)}")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_data("mnist-sample")
    if args.model == "mlp":
        n = args.n_examples or 16
        model: torch.nn.Module = MLP((1, 28, 28), (args.width, args.width), 10, 0.1307, 0.3081)
        threat = ThreatModel(eps_x=0.01, domain=data.domain)
    else:
        n = args.n_examples or 10
        model = _smallcnn(data)
        threat = ThreatModel(eps_w=0.001, domain=data.domain)
    model = model.double().eval()
    x, y = data.x_test[:n].double(), data.y_test[:n]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.process_time()
    with torch.no_grad():
        lower = margin_bounds(model, x, y, threat, "crown").lower
    cpu = time.process_time() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.model} n={n} threshold={args.threshold}: CPU {cpu:.1f} s, RSS before {before:.0f} MB, ", end="")
    print(f"peak {peak:.0f} MB")
    print(f"bound sum {float(lower.sum()):.6f}")


if __name__ == "__main__":
    main()
