"""Branching heuristics compared: domains and seconds to prove the same unsat properties with gap, babsr, widest.

Random 10-input MLPs (3 hidden layers of 24 ReLUs), a box of radius 0.3 and one row C f(x) <= d with d a
quarter of the way from the lowest value PGD finds (64 restarts) down to the root's alpha-CROWN bound: out of
the attack's reach and inside the relaxation's gap, so instances need branching (a few may be sat). Same seeds,
same timeout for every heuristic; fewer domains is better (time per domain is about the same across them).
(The exact MILP needs over a minute per instance at this size, so it is not the reference here.)

    python -m benchmarks.bab_branching --instances 6 --timeout 30
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from nonsingular.complete import BaBOptions, Branching, branch_and_bound, chain_from_model
from nonsingular.complete.attack import pgd_falsify


def instance(seed: int) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 3)
    ).eval()
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(10, generator=g, dtype=torch.float64)
    lo, hi = centre - 0.3, centre + 0.3
    c = torch.randn(1, 3, generator=g, dtype=torch.float64)
    chain = chain_from_model(model, (10,), None)
    starts = lo + torch.rand(64, 10, generator=g, dtype=torch.float64) * (hi - lo)
    groups = torch.ones(1, 1, dtype=torch.bool)
    zero = torch.zeros(1, dtype=torch.float64)
    _, _, v = pgd_falsify(chain, lo, hi, c, zero, groups, starts, steps=100, generator=g, deadline=float("inf"))
    lowest = float(v.min())
    root = branch_and_bound(
        model, lo, hi, c, torch.tensor([lowest - 1e3]), timeout=60, options=BaBOptions(input_split_dims=0)
    )
    bound = root.stats.root_lower_bound + lowest - 1e3
    return model, lo, hi, c, torch.tensor([lowest - 0.25 * (lowest - bound)], dtype=torch.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=6)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.instances):
        model, lo, hi, c, d = instance(seed)
        row: dict[str, object] = {"seed": seed}
        for heuristic in Branching:
            opts = BaBOptions(branching=heuristic, input_split_dims=0)
            res = branch_and_bound(model, lo, hi, c, d, timeout=args.timeout, options=opts)
            row[heuristic.value] = (res.status.value, res.stats.domains_visited, round(res.stats.time_total, 1))
        print(json.dumps(row), flush=True)
        rows.append(row)
    for heuristic in Branching:
        solved = [r for r in rows if r[heuristic.value][0] == "unsat"]  # type: ignore[index]
        total = sum(r[heuristic.value][1] for r in rows)  # type: ignore[index,misc]
        print(f"{heuristic.value}: {len(solved)}/{len(rows)} proven, {total} domains in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
