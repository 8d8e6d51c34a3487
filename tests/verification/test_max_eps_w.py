"""The eps_w bisection: a bracket around the threshold of a monotone predicate within its tolerance, honest ends
when nothing (or everything) is proven, and on a network the proven radius survives the joint attack."""

from __future__ import annotations

import math

import pytest
import torch

from nonsingular import ThreatModel
from nonsingular.properties import parse_vnnlib
from nonsingular.verification import Status, max_eps_w, verify_property
from nonsingular.verification.bounding import prove_pieces
from nonsingular.verification.driver import DEFAULT_METHODS
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
