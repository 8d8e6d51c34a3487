"""Branch and bound never contradicts the exact MILP, and decides small random properties both ways."""

from __future__ import annotations

from bab_cases import run_case

from nonsingular.complete import BaBStatus


def test_bab_agrees_with_the_milp_on_random_small_networks() -> None:
    outcomes = [run_case(seed, timeout=3.0) for seed in range(50)]
    assert [o.seed for o in outcomes if o.disagree] == []
    statuses = {o.status for o in outcomes}
    assert {BaBStatus.SAT, BaBStatus.UNSAT} <= statuses  # both answers are exercised
    assert {"relu", "input"} <= {o.mode for o in outcomes}  # both searches are exercised
    assert sum(o.decided for o in outcomes) >= 45
    assert sum(o.domains > 1 for o in outcomes) >= 5  # some need branching, not just the root bound
