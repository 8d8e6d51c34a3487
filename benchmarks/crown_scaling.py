"""CROWN certificate cost as MLPs grow wider and deeper: seconds and peak memory per example, beside the dense
matmul work of the backward passes (to tell algorithmic growth from overhead), and the peak under several memory
budgets (`--bound-memory-mb`).

    .venv/bin/python -m benchmarks.crown_scaling [--n-examples 16] [--out scaling.json] [--plot scaling.png]

Times are wall and CPU (process) seconds: on a shared machine the CPU time is the stable figure. Each
configuration runs in its own process (1 thread, float64, joint threat eps_x 0.001, eps_w 0.0001 absolute
element-wise on every layer, per example) so that its peak resident memory is its own. The MLPs are seeded and
untrained (784 inputs: mnist-sample digits, 10 classes): the cost depends on the shapes and on how many ReLU
inputs are not provably inactive, not on accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: (widths, memory budget MiB): widths 256-4096 at depth 2, depths at width 512, the 2048-wide net under three budgets.
CONFIGS: list[tuple[tuple[int, ...], float]] = [
    ((256, 256), 256.0),
    ((512, 512), 256.0),
    ((1024, 1024), 256.0),
    ((2048, 2048), 256.0),
    ((4096, 4096), 256.0),
    ((512,), 256.0),
    ((512,) * 3, 256.0),
    ((512,) * 4, 256.0),
    ((2048, 2048), 64.0),
    ((2048, 2048), 1024.0),
]
EPS_X, EPS_W = 0.001, 0.0001


def matmul_work(widths: tuple[int, ...], n_in: int = 784, classes: int = 10) -> int:
    """Multiply-adds of the CROWN passes of one example if every hidden entry is tightened (2 rows each):
    hidden layer k's rows carry back through every Linear before it, and the margins' 9 rows through all."""
    sizes = (n_in, *widths)
    layer = [sizes[j] * sizes[j + 1] for j in range(len(widths))]  # Linear j: sizes[j] -> sizes[j + 1]
    # Layer k's first Linear is a gather of weight rows (Linear.backward_rows): only the earlier ones multiply.
    work = sum(2 * widths[k] * sum(layer[:k]) for k in range(len(widths)))
    return work + (classes - 1) * (sum(layer) + widths[-1] * classes)


def run_one(widths: tuple[int, ...], memory_mb: float, n: int) -> dict[str, Any]:
    """Certify n examples with CROWN in this process; seconds and this process's peak RSS."""
    import torch

    from nonsingular import MLP, ThreatModel
    from nonsingular.bounds import margin_bounds
    from nonsingular.datasets import load_data

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_data("mnist-sample")
    model = MLP((1, 28, 28), widths, 10, 0.1307, 0.3081).double().eval()
    x, y = data.x_test[:n].double(), data.y_test[:n]
    threat = ThreatModel(eps_x=EPS_X, eps_w=EPS_W, domain=data.domain)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        lower = margin_bounds(model, x, y, threat, "crown", memory_mb=memory_mb).lower
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not bool(torch.isfinite(lower).all()):
        raise RuntimeError(f"non-finite CROWN bound for widths {widths}")
    return {
        "widths": list(widths),
        "memory_mb": memory_mb,
        "n": n,
        "seconds": seconds,
        "s_per_example": seconds / n,
        "cpu_s_per_example": cpu / n,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": base,
        "gmac_per_example": matmul_work(widths) / 1e9,
        "certified": float(bound_certified(lower, y)),
    }


def bound_certified(lower: Any, y: Any) -> float:
    import torch

    own = torch.nn.functional.one_hot(y, lower.shape[1]).bool()
    return float((lower.masked_fill(own, math.inf).amin(dim=1) > 0).double().mean())


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    wide = [r for r in rows if len(r["widths"]) == 2 and r["memory_mb"] == 256.0]
    deep = [r for r in rows if set(r["widths"]) == {512} and r["memory_mb"] == 256.0]
    for ax, group, key, label in (
        (axes[0], wide, lambda r: r["widths"][0], "width (depth 2)"),
        (axes[1], deep, lambda r: len(r["widths"]), "hidden layers (width 512)"),
    ):
        group = sorted(group, key=key)
        xs = [key(r) for r in group]
        ax.plot(xs, [r["cpu_s_per_example"] for r in group], "o-", label="CPU seconds / example")
        ax.plot(xs, [r["peak_rss_mb"] / 1000 for r in group], "s-", label="peak RSS GB")
        ref = group[0]["cpu_s_per_example"] / group[0]["gmac_per_example"]
        ax.plot(xs, [r["gmac_per_example"] * ref for r in group], "--", label="matmul work (scaled)")
        ax.set_xlabel(label)
        ax.set_yscale("log")
        if ax is axes[0]:  # widths double from one point to the next: evenly spaced on a log2 axis
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.legend()
    fig.suptitle(f"CROWN on MLPs: joint eps_x {EPS_X}, eps_w {EPS_W}, float64, 1 thread")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-examples", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write the plot (PNG) here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "widths;memory": run in this process
    args = parser.parse_args(argv)
    if args.one is not None:
        widths, memory = args.one.split(";")
        print(json.dumps(run_one(tuple(int(w) for w in widths.split(",")), float(memory), args.n_examples)))
        return
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for widths, memory in CONFIGS:
        spec = f"{','.join(map(str, widths))};{memory}"
        cmd = [sys.executable, "-m", "benchmarks.crown_scaling", "--one", spec, "--n-examples", str(args.n_examples)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"784-{'-'.join(map(str, widths))}-10  budget {memory:>6.0f} MiB  {row['s_per_example']:.3f} s/example  "
            f"(CPU {row['cpu_s_per_example']:.3f} s)  "
            f"peak {row['peak_rss_mb']:.0f} MB  work {row['gmac_per_example']:.2f} GMAC/example  "
            f"certified {row['certified']:.2f}",
            flush=True,
        )
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot is not None:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
