"""Complete-mode fuzzer: branch and bound against the exact MILP on random small ReLU networks and properties.

Each seed draws a network (1-3 hidden layers of 3-10 ReLUs, 2-12 inputs, some of zero width), a box and 1-3
rows in 1-3 disjuncts (tests/support/bab_cases.py); `branch_and_bound` decides it (ReLU splits or input
bisection, chosen at random) and the big-M MILP gives the exact minimum of the property's value. A disagreement
(unsat where the MILP finds an unsafe point, sat where it proves none, or a witness the model does not confirm)
is a bug; ties within 1e-5 of 0 are not judged. Exit status 1 on any disagreement.

--joint instead draws random joint threats (either weight ball, either mode, sometimes bias radii) on random
MLPs and 4 examples each: every example BaB proves robust must survive verified PGD on inputs and weights and
64 random vertices of the threat set (no exact reference exists for weights; this is the soundness check).

    python -m benchmarks.bab_fuzzer --instances 2000 --first-seed 0 [--timeout 5] [--out fuzz.json]
    python -m benchmarks.bab_fuzzer --joint --instances 200 [--timeout 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.support

from tests.support.bab_cases import TIE, run_case, run_joint_case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2000, help="random instances (default 2000)")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first instance (default 0)")
    parser.add_argument("--timeout", type=float, default=5.0, help="BaB seconds per instance (default 5)")
    parser.add_argument("--out", type=Path, default=None, help="write the totals as JSON here")
    parser.add_argument("--joint", action="store_true", help="joint threats against attacks (see above)")
    args = parser.parse_args(argv)
    if args.joint:
        return joint(args)
    counts: dict[str, int] = {}
    modes: dict[str, int] = {}
    failing: list[int] = []
    ties = 0
    slowest = 0.0
    start = time.perf_counter()
    for i in range(args.instances):
        seed = args.first_seed + i
        outcome = run_case(seed, timeout=args.timeout)
        counts[outcome.status.value] = counts.get(outcome.status.value, 0) + 1
        modes[outcome.mode] = modes.get(outcome.mode, 0) + 1
        ties += abs(outcome.exact) <= TIE
        slowest = max(slowest, outcome.seconds)
        if outcome.disagree:
            failing.append(seed)
            print(f"DISAGREEMENT seed {seed}: {outcome}", flush=True)
        if (i + 1) % 100 == 0:
            print(
                f"{i + 1} instances, {counts}, {len(failing)} disagreements, {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    report = {
        "instances": args.instances,
        "first_seed": args.first_seed,
        "statuses": counts,
        "modes": modes,
        "ties": ties,
        "disagreements": len(failing),
        "failing_seeds": failing,
        "slowest_seconds": round(slowest, 2),
        "seconds": round(time.perf_counter() - start, 1),
        "timeout": args.timeout,
    }
    print(json.dumps(report, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if failing else 0


def joint(args: argparse.Namespace) -> int:
    counts: dict[str, int] = {}
    failing: list[int] = []
    start = time.perf_counter()
    for i in range(args.instances):
        seed = args.first_seed + i
        outcome = run_joint_case(seed, timeout=args.timeout)
        for status in outcome.statuses:
            counts[status] = counts.get(status, 0) + 1
        if outcome.violations:
            failing.append(seed)
            print(f"VIOLATION seed {seed}: {outcome}", flush=True)
        if (i + 1) % 25 == 0:
            print(
                f"{i + 1} cases, {counts}, {len(failing)} violations, {time.perf_counter() - start:.0f} s", flush=True
            )
    report = {
        "cases": args.instances,
        "examples": 4 * args.instances,
        "first_seed": args.first_seed,
        "statuses": counts,
        "violations": len(failing),
        "failing_seeds": failing,
        "seconds": round(time.perf_counter() - start, 1),
        "timeout": args.timeout,
    }
    print(json.dumps(report, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
