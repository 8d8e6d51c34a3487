"""VNN-COMP 2021 mnistfc instances through `branch_and_bound`, against the published alpha-beta-CROWN results.

Reads the benchmark's own files (not in this repository) from --root: the ONNX MLPs with `onnx` + numpy (Flatten,
Gemm, Relu only) and the VNNLIB properties with a small regex reader (input box; unsafe = OR over j != label of
Y_j >= Y_label). Prints one line per instance and a JSON summary.

    python -m benchmarks.mnistfc_bab --root /work/vnncomp --timeout 120 [--only 256x2] [--limit 5]
    python -m benchmarks.mnistfc_bab --root /work/vnncomp --throughput 30     # domains/s on 256x6, with a profile
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import io
import json
import pstats
import re
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nonsingular.complete import BaBOptions, branch_and_bound


def load_onnx_mlp(path: Path) -> nn.Sequential:
    """Flatten -> Gemm/Relu chain as an nn.Sequential (float32, the ONNX weights)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    layers: list[nn.Module] = []
    for node in graph.node:
        if node.op_type == "Flatten":
            layers.append(nn.Flatten())
        elif node.op_type == "Relu":
            layers.append(nn.ReLU())
        elif node.op_type == "Gemm":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            w, b = init[node.input[1]], init[node.input[2]]
            if not attrs.get("transB", 0):
                w = w.T
            lin = nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data = torch.tensor(np.ascontiguousarray(w), dtype=torch.float32)
            lin.bias.data = torch.tensor(b, dtype=torch.float32)
            layers.append(lin)
        else:
            raise ValueError(f"{path.name}: op {node.op_type} is not in this reader")
    return nn.Sequential(*layers).eval()


def load_property(path: Path) -> tuple[torch.Tensor, torch.Tensor, int]:
    text = path.read_text()
    lo: dict[int, float] = {}
    hi: dict[int, float] = {}
    for op, idx, val in re.findall(r"\(assert \((<=|>=) X_(\d+) ([-\d.eE+]+)\)\)", text):
        (hi if op == "<=" else lo)[int(idx)] = float(val)
    label = int(re.search(r"\(>= Y_\d+ Y_(\d+)\)", text).group(1))  # type: ignore[union-attr]
    n = len(lo)
    return (
        torch.tensor([lo[i] for i in range(n)], dtype=torch.float64),
        torch.tensor([hi[i] for i in range(n)], dtype=torch.float64),
        label,
    )


def spec_for(label: int, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows Y_label - Y_j <= 0 (unsafe: Y_j >= Y_label), one disjunct per j != label."""
    others = [j for j in range(classes) if j != label]
    c = torch.zeros(len(others), classes, dtype=torch.float64)
    for r, j in enumerate(others):
        c[r, label], c[r, j] = 1.0, -1.0
    return c, torch.zeros(len(others), dtype=torch.float64), torch.arange(len(others))


def published(root: Path) -> dict[tuple[str, str], tuple[str, float]]:
    out = {}
    with (root / "results/results_csv/a-b-CROWN.csv").open() as f:
        for row in csv.reader(f):
            if row and row[0] == "mnistfc":
                out[(Path(row[1]).name, Path(row[2]).name)] = (row[4].lower(), float(row[5]))
    return out


def run_instances(args: argparse.Namespace) -> None:
    bench = args.root / "benchmarks/mnistfc"
    pub = published(args.root)
    rows = list(csv.reader((bench / "mnistfc_instances.csv").open()))
    if args.only:
        rows = [r for r in rows if args.only in r[0]]
    rows = rows[args.skip : args.skip + args.limit] if args.limit else rows[args.skip :]
    summary: dict[str, int] = {}
    wrong = 0
    records = []
    for net, prop, _ in rows:
        model = load_onnx_mlp(bench / net)
        lo, hi, label = load_property(bench / prop)
        c, d, g = spec_for(label)
        t0 = time.perf_counter()
        res = branch_and_bound(
            model, lo, hi, c, d, groups=g, timeout=args.timeout, batch_domains=args.batch, options=BaBOptions()
        )
        dt = time.perf_counter() - t0
        ref = pub.get((net, prop), ("?", float("nan")))
        status = res.status.value
        bad = (status == "unsat" and ref[0] == "sat") or (status == "sat" and ref[0] == "unsat")
        wrong += bad
        summary[status] = summary.get(status, 0) + 1
        s = res.stats
        print(
            f"{net} {prop} {status} {dt:.1f}s  published {ref[0]} {ref[1]:.1f}s  domains {s.domains_visited} "
            f"depth {s.max_depth} root_lb {s.root_lower_bound:.3g} lb {s.global_lower_bound:.3g}"
            f"{'  WRONG' if bad else ''}",
            flush=True,
        )
        records.append({"net": net, "prop": prop, "status": status, "seconds": round(dt, 2), "published": ref[0]})
    print(json.dumps({"summary": summary, "wrong": wrong, "instances": records}))


def throughput(args: argparse.Namespace) -> None:
    """Domains bounded per second on the 784-256x6-10 net, on its hardest published instance, with a profile."""
    bench = args.root / "benchmarks/mnistfc"
    model = load_onnx_mlp(bench / "mnist-net_256x6.onnx")
    lo, hi, label = load_property(bench / "prop_1_0.03.vnnlib")
    c, d, g = spec_for(label)
    prof = cProfile.Profile()
    marks: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    prof.enable()
    opts = BaBOptions(
        refine_neurons=0 if args.no_refine else BaBOptions().refine_neurons, float32_steps=not args.float64_steps
    )
    res = branch_and_bound(
        model,
        lo,
        hi,
        c,
        d,
        groups=g,
        timeout=args.throughput,
        batch_domains=args.batch,
        options=opts,
        progress=lambda p: marks.append((time.perf_counter(), p.domains_visited)),
    )
    prof.disable()
    dt = time.perf_counter() - t0
    s = res.stats
    search_time = s.time_bounding + s.time_branching
    print(
        f"status {res.status.value} in {dt:.1f}s: {s.domains_visited} domains, {s.iterations} batches, "
        f"{s.domains_visited / max(s.time_bounding, 1e-9):.1f} domains/s of bounding time, "
        f"{s.domains_visited / max(dt, 1e-9):.1f} domains/s overall; bounding {s.time_bounding:.1f}s, "
        f"branching {s.time_branching:.1f}s, attack {s.time_attack:.1f}s, other {dt - search_time - s.time_attack:.1f}s"
    )
    # The search's own rate: from the first full batch (2 x batch children) to the end, the root excluded.
    full = [m for m in marks if m[1] >= 4 * args.batch]
    if len(full) >= 2:
        (ta, da), (tb, db) = full[0], full[-1]
        print(f"search loop: {db - da} domains in {tb - ta:.1f}s = {(db - da) / (tb - ta):.1f} domains/s")
    batches = [m for m in marks if m[1] > 1]  # the first report (1 domain) is the root bound's
    root = batches[0][0] - t0 if batches else float("nan")
    print(f"root (falsification, intermediate and final alpha-CROWN) until the first batch: {root:.1f}s")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    print(out.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/work/vnncomp"), help="VNN-COMP 2021 checkout")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per instance (default 120)")
    parser.add_argument("--batch", type=int, default=64, help="domains split per batch (default 64)")
    parser.add_argument("--only", default="", help="only nets whose file name contains this (e.g. 256x2)")
    parser.add_argument("--skip", type=int, default=0, help="skip this many instances first")
    parser.add_argument("--limit", type=int, default=0, help="at most this many instances (0: all)")
    parser.add_argument("--throughput", type=float, default=0.0, help="measure domains/s for this many seconds")
    parser.add_argument("--no-refine", action="store_true", help="keep inherited intermediate bounds")
    parser.add_argument("--float64-steps", action="store_true", help="gradient steps in float64 too")
    args = parser.parse_args(argv)
    if args.throughput:
        throughput(args)
    else:
        run_instances(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
