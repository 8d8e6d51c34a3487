"""Per-example joint PGD throughput and peak memory: small CNN (explicit conv kernels) next to the MLP (Lemma 1).

    .venv/bin/python -m benchmarks.conv_throughput [--repeats 3] [--threads 1] [--batch 128] [--json out.json]

Models on MNIST-shaped inputs (1x28x28), random weights, labels = the model's own predictions (clean accuracy
100%, so robust accuracy is informative): SmallCNN (Conv 1-16 3x3, Conv 16-32 3x3 stride 2, Linear 6272-100,
Linear 100-10) and the MLP 784-512-512-10. 10 PGD steps, one restart, random start. Per-example scope: the
CNN's convolutions take the explicit path (one kernel per example, grouped convolution), its Linear layers
and all of the MLP's take Lemma 1. The shared-scope CNN attack is listed for comparison.

Each configuration runs in a fresh spawned process (peak memory is per process): one warm-up, then the median
of `repeats` timed attacks. Memory is the growth of the process's peak RSS (tracemalloc does not see torch's
allocations) over the attacks alone, taken once the model and data exist: attack workspace, autograd graph and
allocator caches together. Beside it: the size of the explicit per-example weight tensors (W' for the
explicit layers, batch x kernel), and the time and RSS growth of the checker run afterwards.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from typing import Any

import torch

from nonsingular import MLP, PGD, ThreatModel, check_attack
from nonsingular.models import LeNet, SmallCNN

from .timing import bench_device, in_fresh_process, median_time

STEPS = 10
EPS_X, EPS_W = 0.02, 0.0005
SHAPE = (1, 28, 28)
#: (model, threat, scope): the per-example joint rows are the point; input-only and shared rows are references.
CONFIGS = [
    ("cnn", "joint", "per-example"),
    ("cnn", "input", "per-example"),
    ("cnn", "joint", "shared"),
    ("lenet", "joint", "per-example"),
    ("lenet", "input", "per-example"),
    ("mlp", "joint", "per-example"),
    ("mlp", "input", "per-example"),
]
MODELS = {
    "cnn": "SmallCNN 1x28x28: conv16-conv32/2-fc100-fc10",
    "lenet": "LeNet 1x28x28: conv6-avgpool-conv16-avgpool-fc120-fc84-fc10",
    "mlp": "MLP 784-512-512-10",
}


def _build(name: str, batch: int, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    if name == "cnn":
        model = SmallCNN(SHAPE, 10, 0.5, 0.29)
    elif name == "lenet":
        model = LeNet(SHAPE, 10, 0.5, 0.29)
    else:
        model = MLP(SHAPE, (512, 512), 10, 0.5, 0.29)
    model.eval()
    x = torch.rand(batch, *SHAPE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(name: str, kind: str, scope: str, batch: int, repeats: int) -> dict[str, Any]:
    """Time one configuration (run inside a fresh process by `in_fresh_process`).

    Memory: peak RSS growth over the attacks alone (after the model and data exist), then over the checker.
    """
    model, x, y = _build(name, batch)
    device = bench_device()
    model, x, y = model.to(device), x.to(device), y.to(device)
    eps_w = EPS_W if kind == "joint" else 0.0
    threat = ThreatModel(eps_x=EPS_X, eps_w=eps_w, scope=scope)
    attack = PGD(steps=STEPS, batch_size=batch)
    base = _peak_rss_mb()
    seconds, result = median_time(lambda: attack(model, x, y, threat), repeats=repeats, warmup=1)
    attack_peak = _peak_rss_mb()
    t0 = time.perf_counter()
    check = check_attack(model, x, y, result)
    check_seconds = time.perf_counter() - t0
    explicit = [n for n, p in result.paths.items() if p == "explicit"]
    modules = dict(model.named_modules())
    explicit_bytes = sum(modules[n].weight.numel() * 4 * batch for n in explicit)
    return {
        "model": name,
        "threat": kind,
        "scope": scope,
        "batch": batch,
        "seconds": seconds,
        "examples_per_s": batch / seconds,
        "attack_rss_growth_mb": attack_peak - base,
        "check_seconds": check_seconds,
        "check_rss_growth_mb": _peak_rss_mb() - attack_peak,
        "robust_accuracy": check.accuracy,
        "checked": check.passed,
        "paths": result.paths,
        "explicit_weights_mb": explicit_bytes / 2**20,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = [
        in_fresh_process(measure, name, kind, scope, args.batch, args.repeats, threads=args.threads)
        for name, kind, scope in CONFIGS
    ]
    header = (
        f"Joint PGD ({STEPS} steps, eps_x={EPS_X}, eps_w={EPS_W} element-wise absolute), batch {args.batch}, "
        f"CPU {platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}"
    )
    print(header)
    print(
        "| model | threat | scope | examples/s | s/batch | attack peak RSS growth MB | explicit W' MB | "
        "check_attack s | check_attack RSS growth MB | robust acc | checked |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| error: {r['error']} |" + " |" * 10)
            continue
        print(
            f"| {MODELS[r['model']]} | {r['threat']} | {r['scope']} | {r['examples_per_s']:.1f} | {r['seconds']:.3f} | "
            f"{r['attack_rss_growth_mb']:.0f} | {r['explicit_weights_mb']:.2f} | {r['check_seconds']:.2f} | "
            f"{r['check_rss_growth_mb']:.0f} | {r['robust_accuracy']:.3f} | {r['checked']} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"header": header, "rows": rows}, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
