"""Run a VNN-COMP benchmark (or a subset) with `nonsingular verify` and compare with the published results.

    python -m benchmarks.vnncomp --benchmark-dir DIR --results-dir DIR [--instances 0-9] [--limit N]
        [--timeout S] [--work DIR] [--max-eps-w [--max-eps-w-timeout S] [--max-eps-w-method bounds|bab]]
        [--bounds-alone]

DIR of the benchmark holds its `*instances.csv` and the files it names (e.g. the 2021 `mnistfc` folder of
stanleybak/vnncomp2021); the results folder holds the published per-tool CSVs (benchmark, onnx, vnnlib, prep
time, result, time; stanleybak/vnncomp2021_results, `results_csv`). Nothing of either is in this repository.

A wrong answer is an `unsat` of ours where a trusted published tool (--trusted; default alpha-beta-CROWN,
ERAN, VeriNet, Marabou, nnenum) reported a counterexample (sat / violated), or a `sat` of ours whose
counterexample onnxruntime rejects when this script re-checks it (in the box as written, the output
constraint on onnxruntime's output). A sat claimed only by another tool is listed as disputed (RPM's 2021
`violated` on mnistfc contradicts every other tool's `holds`). The table is per network and epsilon (from
the property's file name `prop_<i>_<eps>.vnnlib` when it has that form): our counts beside each published
tool's on the same instances. The run resumes: rerun the same command after a kill and finished instances are skipped.

With --max-eps-w, the joint column per network and epsilon: over the `unsat` instances, the median relative
weight radius proven by the bounds alone and with branch and bound, and how many instances branch and bound
proves a larger radius on. Branch and bound starts from the bounds' radius, so it is never smaller: an instance
where it is would be a bug, printed as a BAB BELOW BOUNDS line and counted as a failure (exit 1).

With --bounds-alone, every selected instance is also bounded by IBP, CROWN and alpha-CROWN alone (no attack, no
branch and bound, the instance's timeout): a column counts what they prove, and each of those that `verify` did
not answer `unsat` is printed as a MISSED line and counted as a failure (exit 1): the search must never lose
what its own first stage proves.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from nonsingular.bounds import BoundMethod
from nonsingular.models.onnx import load_onnx
from nonsingular.properties import load_vnnlib
from nonsingular.threat import EpsMode
from nonsingular.verification import VerifyOptions, read_instances, run_campaign
from nonsingular.verification.bounding import prove_pieces
from nonsingular.verification.campaign import Instance, ResultRow, result_file
from nonsingular.verification.instance import _plain, onnx_input_shape
from nonsingular.verification.radius import RadiusMethod

PUBLISHED_SAT = {"sat", "violated"}
PUBLISHED_UNSAT = {"unsat", "holds"}
TOOLS = ("a-b-CROWN", "VeriNet", "ERAN", "Marabou", "nnenum")


def _select(spec: str | None, n: int) -> list[int]:
    if not spec:
        return list(range(n))
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return [i for i in out if 0 <= i < n]


def _published(results_dir: Path) -> dict[str, dict[tuple[str, str], str]]:
    """tool -> (onnx file name, vnnlib file name) -> 'sat' | 'unsat' | other."""
    out: dict[str, dict[tuple[str, str], str]] = {}
    for path in sorted(results_dir.glob("*.csv")):
        table: dict[tuple[str, str], str] = {}
        for row in csv.reader(path.read_text().splitlines()):
            if len(row) < 5:
                continue
            result = row[4].strip().lower()
            verdict = "sat" if result in PUBLISHED_SAT else "unsat" if result in PUBLISHED_UNSAT else "other"
            table[(Path(row[1]).name, Path(row[2]).name)] = verdict
        out[path.stem] = table
    return out


def _key(name: str) -> str:
    return Path(name).name.removesuffix(".gz")


def _recheck_sat(inst: Instance, text: str) -> bool:
    """Our counterexample, as written: inside a box of the property, and unsafe by onnxruntime's output."""
    body = text.split("\n", 1)[1].replace("(", " ").replace(")", " ").split()
    values = {body[k]: float(body[k + 1]) for k in range(0, len(body), 2)}
    prop = load_vnnlib(inst.vnnlib_path)
    x = torch.tensor([values[f"X_{i}"] for i in range(prop.num_inputs)], dtype=torch.float64)
    with _plain(inst.onnx_path) as model_path:
        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        meta = sess.get_inputs()[0]
        shape = [1, *[int(d) for d in meta.shape[1:]]]
        y = sess.run(None, {meta.name: x.numpy().astype(np.float32).reshape(shape)})[0].reshape(1, -1)
    y64 = torch.from_numpy(y.astype(np.float64))
    return any(bool(case.contains(x[None]).all()) and float(case.unsafe_violation(y64)[0]) <= 0 for case in prop.cases)


def _group(inst: Instance) -> tuple[str, str]:
    m = re.match(r"prop_\d+_([0-9.]+)\.vnnlib", _key(inst.vnnlib))
    return Path(inst.onnx).name.removesuffix(".gz"), m.group(1) if m else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark-dir", type=Path, required=True)
    parser.add_argument("--results-dir", type=Path, required=True)
    parser.add_argument("--instances", help="indices into the instances CSV, e.g. 0-9 or 0,5,10-12 (default: all)")
    parser.add_argument("--limit", type=int, help="at most this many of the selected instances")
    parser.add_argument("--timeout", type=float, help="seconds per instance instead of the CSV's")
    parser.add_argument("--work", type=Path, default=Path("vnncomp-run"), help="results CSV and result files")
    parser.add_argument("--max-eps-w", action="store_true", help="the joint column: relative eps_w per unsat")
    parser.add_argument(
        "--max-eps-w-timeout",
        type=float,
        help="seconds of the --max-eps-w bisection per unsat, on top of the answer's time (default: the timeout)",
    )
    parser.add_argument(
        "--max-eps-w-method",
        default=RadiusMethod.BAB.value,
        choices=[method.value for method in RadiusMethod],
        help="bisect with the bounds alone, or the bounds then branch and bound (default; reports both)",
    )
    parser.add_argument(
        "--bounds-alone",
        action="store_true",
        help="also bound every instance with IBP, CROWN and alpha-CROWN alone (no attack, no branch and bound): "
        "a column of what they prove, and a MISSED line (exit 1) for each of those we did not answer unsat",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--trusted",
        default=",".join(TOOLS),
        type=lambda text: set(text.split(",")),
        help="tools whose published sat counts against our unsat (default: alpha-beta-CROWN, ERAN, VeriNet, "
        "Marabou, nnenum; the 2021 results' other tools' sat claims are listed as disputed, e.g. RPM's, which "
        "contradict all others)",
    )
    args = parser.parse_args(argv)
    csvs = sorted(args.benchmark_dir.glob("*instances.csv"))
    if len(csvs) != 1:
        parser.error(f"{args.benchmark_dir} must hold exactly one *instances.csv, found {len(csvs)}")
    todo = read_instances(csvs[0], args.benchmark_dir)
    chosen = _select(args.instances, len(todo))[: args.limit]
    subset = [todo[i] for i in chosen]
    if args.timeout is not None:
        subset = [Instance(i.onnx, i.vnnlib, args.timeout, i.onnx_path, i.vnnlib_path, i.line) for i in subset]
    budget = args.max_eps_w_timeout
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        parser.error(f"--max-eps-w-timeout must be a positive number of seconds, got {budget}")
    options = VerifyOptions(
        threads=args.threads,
        max_eps_w=args.max_eps_w,
        weight_mode=EpsMode.RELATIVE,
        max_eps_w_timeout=budget,
        max_eps_w_method=RadiusMethod(args.max_eps_w_method),
    )
    out = args.work / "results.csv"

    def progress(index: int, total: int, inst: Instance, result: object) -> None:
        if result is not None:
            print(
                f"[{index + 1}/{total}] {inst.onnx} {inst.vnnlib}: {result.status.value} {result.seconds:.1f} s",  # type: ignore[attr-defined]
                file=sys.stderr,
                flush=True,
            )

    rows = run_campaign(subset, out, options, progress=progress, joint=args.max_eps_w)
    alone = [_bounds_alone(inst) for inst in subset] if args.bounds_alone else [False] * len(subset)
    missed = [
        f"{_key(inst.onnx)} {_key(inst.vnnlib)}: {row.result}"
        for inst, row, proven in zip(subset, rows, alone, strict=True)
        if proven and row.result != "unsat"
    ]
    published = _published(args.results_dir)
    groups: dict[tuple[str, str], list[tuple[Instance, ResultRow]]] = defaultdict(list)
    wrong: list[str] = []
    disputed: list[str] = []
    for index, (inst, row) in enumerate(zip(subset, rows, strict=True)):
        groups[_group(inst)].append((inst, row))
        key = (_key(inst.onnx), _key(inst.vnnlib))
        claims = sorted(name for name, t in published.items() if t.get(key) == "sat")
        if row.result == "unsat" and any(name in args.trusted for name in claims):
            wrong.append(f"unsat where a published tool found a counterexample: {key} ({', '.join(claims)})")
        elif row.result == "unsat" and claims:
            disputed.append(f"unsat where only {', '.join(claims)} claimed sat: {key}")
        if row.result == "sat":
            text = result_file(out, index, inst).read_text()
            if not _recheck_sat(inst, text):
                wrong.append(f"sat that onnxruntime rejects: {key}")
    tools = [t for t in TOOLS if t in published]
    head = [
        "network",
        "eps",
        "n",
        "ours unsat",
        "ours sat",
        "unknown",
        "timeout",
        "error",
        "wrong",
        "median s (answered)",
    ]
    head += [f"{t} unsat+sat" for t in tools]
    if args.bounds_alone:
        head += ["bounds alone unsat"]
    if args.max_eps_w:
        head += ["median rel. eps_w proven, bounds (unsat)", "median rel. eps_w proven, BaB", "BaB > bounds"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    total: dict[str, int] = defaultdict(int)
    below: list[str] = []
    proven_alone = {id(row) for row, proven in zip(rows, alone, strict=True) if proven}
    for (net, eps), items in sorted(groups.items()):
        count = defaultdict(int)
        for _, row in items:
            count[row.result] += 1
        answered = [row.seconds for _, row in items if row.result in ("sat", "unsat")]
        cells = [net, eps, str(len(items))] + [str(count[s]) for s in ("unsat", "sat", "unknown", "timeout", "error")]
        bad = sum(1 for w in wrong if any(_key(i.vnnlib) in w and _key(i.onnx) in w for i, _ in items))
        cells += [str(bad), f"{statistics.median(answered):.1f}" if answered else "-"]
        for t in tools:
            verdicts = [published[t].get((_key(i.onnx), _key(i.vnnlib))) for i, _ in items]
            cells.append(f"{verdicts.count('unsat')}+{verdicts.count('sat')}")
        if args.bounds_alone:
            cells.append(str(sum(1 for _, row in items if id(row) in proven_alone)))
        if args.max_eps_w:
            cells += _joint_cells([r for _, r in items], below)
        for s in ("unsat", "sat", "unknown", "timeout", "error"):
            total[s] += count[s]
        print("| " + " | ".join(cells) + " |")
    print(f"\n{len(rows)} instances: " + ", ".join(f"{total[s]} {s}" for s in total) + f"; wrong answers: {len(wrong)}")
    for w in wrong:
        print("WRONG:", w)
    for w in disputed:
        print("disputed (not counted):", w)
    for b in below:
        print("BAB BELOW BOUNDS (a bug: branch and bound starts from the bounds' radius):", b)
    if args.bounds_alone:
        print(f"bounds alone prove {len(proven_alone)}; of those, not answered unsat by verify: {len(missed)}")
    for m in missed:
        print("MISSED (the bounds alone prove it):", m)
    return 1 if wrong or below or missed else 0


def _bounds_alone(inst: Instance) -> bool:
    """Whether IBP, CROWN and alpha-CROWN, tried in turn without attack or branch and bound, prove every piece
    of the instance's property within its timeout."""
    prop = load_vnnlib(inst.vnnlib_path)
    with _plain(inst.onnx_path) as model_path:
        model, shape = load_onnx(model_path), onnx_input_shape(model_path)
    methods = [BoundMethod.IBP, BoundMethod.CROWN, BoundMethod.ALPHA_CROWN]
    outcome = prove_pieces(model, prop, shape, None, methods, set(prop.pieces()), time.monotonic() + inst.timeout)
    return not outcome.open_pieces


def _joint_cells(rows: list[ResultRow], below: list[str]) -> list[str]:
    """Median radius by the bounds and by branch and bound over the unsat rows with both, the count where branch
    and bound is larger; rows where it is smaller go to `below`."""
    pairs = [
        (r.eps_w_proven_bounds, r.eps_w_proven)
        for r in rows
        if r.result == "unsat" and r.eps_w_proven_bounds is not None and r.eps_w_proven is not None
    ]
    for r in rows:
        if r.eps_w_proven_bounds is not None and r.eps_w_proven is not None and r.eps_w_proven < r.eps_w_proven_bounds:
            below.append(f"{_key(r.onnx)} {_key(r.vnnlib)}: BaB {r.eps_w_proven!r} < bounds {r.eps_w_proven_bounds!r}")
    if not pairs:
        return ["-", "-", "-"]
    bounds = statistics.median(b for b, _ in pairs)
    bab = statistics.median(p for _, p in pairs)
    return [f"{bounds:.3g}", f"{bab:.3g}", f"{sum(1 for b, p in pairs if p > b)}/{len(pairs)}"]


if __name__ == "__main__":
    raise SystemExit(main())
