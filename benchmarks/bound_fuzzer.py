"""Soundness fuzzer for the graph bound engine: random small graphs (conv with random stride/padding/dilation/
groups, BatchNorm, residual add, concatenation, max/avg/adaptive pooling) under random joint threats (both balls,
both modes, bias radii, layer subsets, per-layer eps, two domains); every method's margin lower bound against
the margins reached by checked PGD (margin and cross-entropy losses, explicit per-example weights) and random
vertices of the threat set. Any violation is a bug.

    python -m benchmarks.bound_fuzzer --examples 10000 [--per-case 8] [--steps 20] [--out fuzz.json]
    python -m benchmarks.bound_fuzzer --execution float32 ...   # float32 networks run in float32: the bound
                                                                # for the executed model (rounding included)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.support

from tests.support.graph_fuzz import METHODS, run_case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000, help="examples to check in all (default 10000)")
    parser.add_argument("--per-case", type=int, default=8, help="examples per random graph (default 8)")
    parser.add_argument("--steps", type=int, default=20, help="PGD steps per attack (default 20)")
    parser.add_argument("--alpha-steps", type=int, default=10, help="alpha-CROWN steps (default 10)")
    parser.add_argument("--first-seed", type=int, default=1000, help="seed of the first graph (default 1000)")
    parser.add_argument(
        "--execution",
        choices=["float64", "float32"],
        default="float64",
        help="dtype the networks and attacks run in; float32 checks the executed-model bound (default float64)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the totals as JSON here")
    args = parser.parse_args(argv)
    totals = {"examples": 0, "cases": 0, "looser": 0, "closest": float("inf")}
    violations = dict.fromkeys(METHODS, 0)
    certified = dict.fromkeys(METHODS, 0)
    failing: list[int] = []
    start = time.perf_counter()
    seed = args.first_seed
    while totals["examples"] < args.examples:
        result = run_case(
            seed, n=args.per_case, steps=args.steps, alpha_steps=args.alpha_steps, execution=args.execution
        )
        totals["examples"] += result.examples
        totals["cases"] += 1
        totals["looser"] += result.looser
        totals["closest"] = min(totals["closest"], result.closest)
        for m in METHODS:
            violations[m] += result.violations[m]
            certified[m] += result.certified[m]
        if any(result.violations.values()) or result.looser:
            failing.append(seed)
        if totals["cases"] % 100 == 0:
            print(
                f"{totals['examples']} examples, violations {violations}, {time.perf_counter() - start:.0f} s",
                flush=True,
            )
        seed += 1
    report = {
        **totals,
        "violations": violations,
        "certified": certified,
        "failing_seeds": failing,
        "seconds": round(time.perf_counter() - start, 1),
        "per_case": args.per_case,
        "pgd_steps": args.steps,
        "alpha_steps": args.alpha_steps,
        "execution": args.execution,
    }
    print(json.dumps(report, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
