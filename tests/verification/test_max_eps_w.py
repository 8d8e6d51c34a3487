"""The eps_w bisection: a bracket around the threshold of a monotone predicate within its tolerance, honest ends
when nothing (or everything) is proven, and on a network the proven radius survives the joint attack; the
two-stage joint column: branch and bound's radius never below the bounds', its witnesses real."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from nonsingular import ThreatModel
from nonsingular.properties import Property, parse_vnnlib
from nonsingular.verification import Status, max_eps_w, verify_property
from nonsingular.verification.bounding import prove_pieces
from nonsingular.verification.driver import DEFAULT_METHODS
from nonsingular.verification.falsify import falsify_case
from nonsingular.verification.joint import joint_witness
from nonsingular.verification.radius import CAP, RadiusMethod, joint_radius
from tests.support.verification import mlp, vnnlib


@pytest.mark.parametrize("threshold", [1e-5, 3.7e-3, 0.2, 0.99])
def test_the_bracket_holds_the_threshold(threshold: float) -> None:
    bracket = max_eps_w(lambda e: e <= threshold)
    assert bracket.proven <= threshold < bracket.refuted_or_open
    assert bracket.refuted_or_open - bracket.proven <= 0.05 * bracket.refuted_or_open


def test_nothing_and_everything_proven() -> None:
    nothing = max_eps_w(lambda e: False)
    assert nothing.proven == 0.0
    everything = max_eps_w(lambda e: True, cap=0.5)
    assert everything.proven >= 0.25 and everything.refuted_or_open == math.inf


def test_the_proven_radius_survives_the_joint_attack() -> None:
    model = mlp((2, 12, 12, 2), 5)
    with torch.no_grad():
        top = int(model(torch.tensor([[0.3, -0.2]])).argmax())
    prop = parse_vnnlib(vnnlib([0.28, -0.22], [0.32, -0.18], 2, [[(1 - top, top)]]))

    def threat(e: float) -> ThreatModel:
        return ThreatModel(eps_w=e, weight_mode="relative")

    def proves(e: float) -> bool:
        return not prove_pieces(model, prop, (2,), threat(e), DEFAULT_METHODS, set(prop.pieces()), math.inf).open_pieces

    bracket = max_eps_w(proves)
    assert bracket.proven > 0
    at_radius = verify_property(model, prop, timeout=30, threat=threat(bracket.proven), complete=False)
    assert at_radius.status is Status.UNSAT
    far = verify_property(model, prop, timeout=30, threat=threat(50 * bracket.refuted_or_open), complete=False)
    assert far.status is not Status.UNSAT


def test_a_known_proven_radius_is_the_lower_end_from_the_start() -> None:
    grown = max_eps_w(lambda e: e <= 0.3, start=0.25, proven=0.2)
    assert 0.25 <= grown.proven <= 0.3 < grown.refuted_or_open
    kept = max_eps_w(lambda e: e <= 0.21, start=0.25, proven=0.2)  # the first radius tried already fails
    assert kept.proven >= 0.2 and kept.refuted_or_open <= 0.25


def _relative(e: float) -> ThreatModel:
    return ThreatModel(eps_w=e, weight_mode="relative")


def _case(
    seed: int, half_width: float, widths: tuple[int, ...] = (2, 16, 16, 2)
) -> tuple[torch.nn.Sequential, Property]:
    model = mlp(widths, seed)
    with torch.no_grad():
        top = int(model(torch.tensor([[0.3, -0.2]])).argmax())
    lower, upper = [0.3 - half_width, -0.2 - half_width], [0.3 + half_width, -0.2 + half_width]
    return model, parse_vnnlib(vnnlib(lower, upper, 2, [[(1 - top, top)]]))


def _attack_finds(model: torch.nn.Module, prop: Property, eps: float) -> bool:
    """The joint attack (APGD on input and weights, many restarts), its best rows re-checked."""
    case = prop.cases[0]
    for seed in range(3):
        found = falsify_case(model, case, (2,), threat=_relative(eps), restarts=64, steps=200, seed=seed)
        if joint_witness(model, found, case, 0, (2,), _relative(eps), 8) is not None:
            return True
    return False


@pytest.mark.parametrize(("seed", "half_width"), [(0, 0.1), (0, 0.05), (2, 0.1)])
def test_branch_and_bound_proves_at_least_the_bounds_radius_and_it_holds(seed: int, half_width: float) -> None:
    model, prop = _case(seed, half_width)
    radius = joint_radius(model, prop, (2,), _relative, DEFAULT_METHODS, budget=120)
    bounds, bab = radius.bounds, radius.bab
    assert bab is not None
    assert 0 < bounds.proven <= bab.proven
    assert bounds.proven <= bounds.refuted_or_open and bab.proven <= bab.refuted_or_open < math.inf
    assert bab.refuted_or_open <= radius.refuted  # a refuted radius closes the bracket from above
    assert not _attack_finds(model, prop, bab.proven)
    if radius.witness is not None:  # what the search found holds on its own: box, ball, unsafe output
        cex, case, eps = radius.witness, prop.cases[0], radius.refuted
        assert bool(case.contains(cex.x[None]).all())
        params = dict(model.named_parameters())
        assert cex.weights
        for name, w in cex.weights.items():
            if name.endswith("weight"):
                assert bool(((w - params[name].detach()).abs() <= eps * params[name].detach().abs() + 1e-6).all())
            else:  # biases stay exact under a weight-only ball
                assert torch.equal(w, params[name].detach())
        with torch.no_grad():
            y = functional_call(model, {**params, **cex.weights}, (cex.x.to(torch.float32)[None],))
        assert float(case.unsafe[cex.conjunction].violation(y.to(torch.float64))[0]) <= 0


def test_branch_and_bound_proves_more_than_the_bounds_where_they_are_loose() -> None:
    model, prop = _case(0, 0.1)
    radius = joint_radius(model, prop, (2,), _relative, DEFAULT_METHODS, budget=120)
    assert radius.bab is not None and radius.bab.proven > 1.05 * radius.bounds.proven
    assert radius.stats()["eps_w_proven"] == radius.bab.proven
    assert radius.stats()["eps_w_proven_bounds"] == radius.bounds.proven


def test_bounds_only_keeps_the_old_column() -> None:
    model, prop = _case(0, 0.1)
    radius = joint_radius(model, prop, (2,), _relative, DEFAULT_METHODS, budget=60, method=RadiusMethod.BOUNDS)
    assert radius.bab is None and radius.final is radius.bounds
    assert "eps_w_seconds_bab" not in radius.stats()


def test_bounds_that_prove_everything_up_to_the_cap() -> None:
    model, prop = _case(0, 0.1)
    radius = joint_radius(model, prop, (2,), lambda e: _relative(e * 1e-3), DEFAULT_METHODS, budget=60)
    assert radius.bounds.refuted_or_open == math.inf and radius.bab is not None
    assert radius.bab.proven == CAP and radius.bab.refuted_or_open == math.inf  # tested once, at the cap


def test_bounds_that_leave_exact_weights_open_hand_over_to_branch_and_bound_at_once() -> None:
    """The answer needed branch and bound (the bounds do not prove it at eps_w = 0): stage 1 is one bound call
    that says so, [0, 0], and the search alone finds the radius, which the joint attack does not break."""
    model, prop = _case(4, 0.8, (2, 24, 24, 24, 2))
    assert prove_pieces(model, prop, (2,), None, DEFAULT_METHODS, set(prop.pieces()), math.inf).open_pieces
    radius = joint_radius(model, prop, (2,), _relative, DEFAULT_METHODS, budget=60)
    assert (radius.bounds.proven, radius.bounds.refuted_or_open, radius.bounds.steps) == (0.0, 0.0, 1)
    assert radius.bab is not None and 0 < radius.bab.proven <= radius.bab.refuted_or_open <= radius.refuted
    assert not _attack_finds(model, prop, radius.bab.proven)
