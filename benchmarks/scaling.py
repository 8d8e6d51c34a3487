"""How input-only and per-example joint PGD scale with batch, width and depth (MLPs, one thread).

    .venv/bin/python -m benchmarks.scaling [--rounds 5] [--threads 1] [--png benchmarks/scaling.png]

Random-weight MLPs 784-(width x depth)-10 on uniform inputs labelled by the model itself (as benchmarks.attacks'
synthetic settings); 10 steps, no random start, eps_x 0.02, eps_w 0.0005 absolute element-wise. For each point
the two attacks take turns in one process (median of `rounds` after a warm-up). Three sweeps around the
784-512-512-10 MLP at batch 256: batch 64-512, width 256-2048 (two hidden layers), depth 1-8 hidden layers of 512.
Beside each time: the dense matmul work of the attack (forward + input gradient, 10 steps) in GFLOP/s, so a
super-linear time shows up as a falling rate.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from nonsingular import PGD, ThreatModel

from .attacks import STEPS, layer_sizes, synthetic
from .timing import in_fresh_process

EPS_X, EPS_W = 0.02, 0.0005
SWEEPS: dict[str, list[tuple[int, tuple[int, ...]]]] = {
    "batch": [(b, (512, 512)) for b in (64, 128, 256, 512)],
    "width": [(256, (w, w)) for w in (256, 512, 1024, 2048)],
    "depth": [(256, (512,) * d) for d in (1, 2, 4, 8)],
}


def measure_point(batch: int, widths: tuple[int, ...], rounds: int) -> dict[str, Any]:
    """Median seconds of our input-only and joint PGD on one MLP, taking turns; robust accuracies."""
    model, x, y = synthetic((1, 28, 28), widths, batch)
    attack = PGD(steps=STEPS, random_start=False, batch_size=batch)
    threats = {"input": ThreatModel(eps_x=EPS_X), "joint": ThreatModel(eps_x=EPS_X, eps_w=EPS_W)}
    runs = {name: (lambda t=t: attack(model, x, y, t)) for name, t in threats.items()}
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    results = {}
    for _ in range(rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - t0)
    flops = STEPS * sum(4 * batch * n_in * n_out for n_in, n_out in layer_sizes(model))
    out: dict[str, Any] = {"batch": batch, "widths": list(widths), "gflop": flops / 1e9}
    for name in runs:
        out[name] = {
            "seconds": statistics.median(times[name]),
            "robust_accuracy": float((results[name].logits.argmax(1) == y).float().mean()),
        }
    return out


def sweeps(rounds: int) -> dict[str, Any]:
    return {axis: [measure_point(b, w, rounds) for b, w in points] for axis, points in SWEEPS.items()}


def _x(axis: str, point: dict[str, Any]) -> int:
    return {"batch": point["batch"], "width": point["widths"][0], "depth": len(point["widths"])}[axis]


def plot(results: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (axis, points) in zip(axes, results.items(), strict=True):
        xs = [_x(axis, p) for p in points]
        for name, style in (("input", "o-"), ("joint", "s--")):
            ax.plot(xs, [1000 * p[name]["seconds"] for p in points], style, label=f"{name} PGD")
        for xv, p in zip(xs, points, strict=True):
            ratio = p["joint"]["seconds"] / p["input"]["seconds"]
            ax.annotate(f"{ratio:.2f}x", (xv, 1000 * p["joint"]["seconds"]), fontsize=7, va="bottom")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(
            {
                "batch": "batch (784-512-512-10)",
                "width": "width (784-w-w-10, batch 256)",
                "depth": "hidden layers of 512 (batch 256)",
            }[axis]
        )
        ax.set_ylabel("ms per attack (10 steps)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("PGD time vs batch, width and depth (joint / input ratio annotated)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def run_scaling(png: Path, rounds: int = 5, threads: int = 1) -> dict[str, Any]:
    """All three sweeps in one fresh process; writes the plot to `png`."""
    results = in_fresh_process(sweeps, rounds, threads=threads)
    results.pop("peak_rss_mb", None)
    if "error" not in results:
        plot(results, png)
        results["threads"] = threads
        results["png"] = str(png)
    return results


def render_scaling(results: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md lines: one table per sweep and the plot."""
    if "error" in results:
        return ["## Scaling: time vs batch, width and depth", "", f"not measured: {results['error']}", ""]
    lines = [
        "## Scaling: time vs batch, width and depth (input and joint PGD)",
        "",
        f"`python -m benchmarks.scaling` ({results['threads']} thread, the two attacks taking turns, median of 5 "
        f"rounds; 10 steps, eps_x {EPS_X}, eps_w {EPS_W}). GFLOP/s: the forward + input-gradient matmul work "
        "of the 10 steps over the input attack's time (a falling rate would be a super-linear cost).",
        "",
        f"![PGD time vs batch, width and depth]({results['png']})",
        "",
        "| sweep | MLP | batch | input ms | joint ms | joint / input | input GFLOP/s | robust acc input / joint |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for axis in SWEEPS:
        for p in results[axis]:
            shape = "-".join(str(v) for v in (784, *p["widths"], 10))
            i, j = p["input"], p["joint"]
            lines.append(
                f"| {axis} | {shape} | {p['batch']} | {1000 * i['seconds']:.1f} | {1000 * j['seconds']:.1f} | "
                f"{j['seconds'] / i['seconds']:.2f}x | {p['gflop'] / i['seconds']:.1f} | "
                f"{100 * i['robust_accuracy']:.1f}% / {100 * j['robust_accuracy']:.1f}% |"
            )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--png", type=Path, default=Path("benchmarks/scaling.png"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("\n".join(render_scaling(run_scaling(args.png, args.rounds, args.threads))))


if __name__ == "__main__":
    main()
