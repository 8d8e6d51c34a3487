"""The search's contract: timeout honoured, deterministic for a seed, progress reported, bad input refused."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from nonsingular.bounds import UnsupportedLayerError
from nonsingular.complete import BaBOptions, BaBStatus, Progress, branch_and_bound
from nonsingular.errors import InputError


def _hard_case():
    """A 20-40-40-40-3 net and a row whose offset sits in the relaxation's gap: branching for a long while.

    (With this seed the attack's lowest value of z_0 - z_1 is -0.104 and the root bound -0.946; d = -0.19 is a
    tenth of the way down that gap, which BaB does not settle in 20 s on one core.)
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 3)
    ).eval()
    g = torch.Generator().manual_seed(0)
    centre = torch.rand(20, generator=g, dtype=torch.float64)
    lo, hi = centre - 0.4, centre + 0.4
    c = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    return model, lo, hi, c, torch.tensor([-0.19], dtype=torch.float64)


def test_timeout_is_honoured_within_a_second() -> None:
    model, lo, hi, c, d = _hard_case()
    start = time.monotonic()
    res = branch_and_bound(model, lo, hi, c, d, timeout=1.5)
    elapsed = time.monotonic() - start
    assert elapsed < 2.5
    assert res.status in (BaBStatus.TIMEOUT, BaBStatus.UNSAT)
    if res.status is BaBStatus.TIMEOUT:
        assert res.stats.global_lower_bound <= 0 and res.witness is None


def test_same_seed_same_search() -> None:
    model, lo, hi, c, d = _hard_case()
    options = BaBOptions(attack_restarts=4)
    runs = [branch_and_bound(model, lo, hi, c, d + 0.3, timeout=30, seed=7, options=options) for _ in range(2)]
    assert runs[0].status is runs[1].status is BaBStatus.SAT
    assert runs[0].witness is not None and runs[1].witness is not None
    assert torch.equal(runs[0].witness.x, runs[1].witness.x)
    report = json.loads(json.dumps(runs[0].to_dict()))  # the JSON form round-trips
    assert report["status"] == "sat" and len(report["counterexample"]["x"]) == 20
    capped = [
        branch_and_bound(model, lo, hi, c, d, timeout=60, seed=3, batch_domains=8, memory_mb=0.05, options=options)
        for _ in range(2)
    ]  # the memory cap, not the clock, ends these: identical searches
    assert capped[0].status is capped[1].status
    assert capped[0].stats.domains_visited == capped[1].stats.domains_visited
    assert capped[0].stats.global_lower_bound == capped[1].stats.global_lower_bound


def test_memory_budget_ends_with_unknown_not_a_crash() -> None:
    model, lo, hi, c, d = _hard_case()
    res = branch_and_bound(model, lo, hi, c, d, timeout=60, batch_domains=8, memory_mb=0.05)
    assert res.status is BaBStatus.UNKNOWN
    assert "budget" in res.reason


def test_progress_reports_domains_and_time_left() -> None:
    model, lo, hi, c, d = _hard_case()
    seen: list[Progress] = []
    branch_and_bound(model, lo, hi, c, d, timeout=4.0, progress=seen.append)
    assert seen
    assert all(p.seconds_left <= 4.0 for p in seen)
    assert seen[-1].domains_visited >= seen[0].domains_visited
    assert "domains" in seen[-1].line()


def test_bad_inputs_are_one_line_errors() -> None:
    model, lo, hi, c, d = _hard_case()
    with pytest.raises(InputError, match="lower > upper"):
        branch_and_bound(model, hi, lo, c, d)
    with pytest.raises(InputError, match="same non-empty shape"):
        branch_and_bound(model, lo[:3], hi, c, d)
    with pytest.raises(InputError, match="C must be"):
        branch_and_bound(model, lo, hi, c[:, :2], d)
    with pytest.raises(InputError, match="timeout"):
        branch_and_bound(model, lo, hi, c, d, timeout=0)
    with pytest.raises(InputError, match="proof_margin"):
        branch_and_bound(model, lo, hi, c, d, options=BaBOptions(proof_margin=-1.0))
    conv = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(36, 3))
    with pytest.raises(UnsupportedLayerError, match="Conv1d"):
        branch_and_bound(conv, torch.zeros(1, 20), torch.ones(1, 20), c, d)


def test_zero_width_box_is_a_point_decided_exactly() -> None:
    model, lo, _, c, _ = _hard_case()
    with torch.no_grad():
        value = float(c[0] @ model.double()(lo[None])[0])
        model.float()
    sat = branch_and_bound(model, lo, lo, c, torch.tensor([value + 1e-3]), timeout=10)
    assert sat.status is BaBStatus.SAT
    unsat = branch_and_bound(model, lo, lo, c, torch.tensor([value - 1e-3]), timeout=10)
    assert unsat.status is BaBStatus.UNSAT


def test_proof_margin_withholds_thin_proofs() -> None:
    model, lo, _, c, _ = _hard_case()
    with torch.no_grad():
        value = float(c[0] @ model.double()(lo[None])[0])
        model.float()
    d = torch.tensor([value - 1e-3])
    assert branch_and_bound(model, lo, lo, c, d, timeout=10).status is BaBStatus.UNSAT
    strict = BaBOptions(proof_margin=1e-2)
    assert branch_and_bound(model, lo, lo, c, d, timeout=10, options=strict).status is not BaBStatus.UNSAT
