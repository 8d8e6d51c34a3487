"""verify_property against exact answers: on small ReLU networks a mixed-integer program decides each property,
and the verifier never says unsat where a counterexample exists nor sat without a re-checked one; joint
properties carry weights inside the ball; the clock is honoured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from nonsingular import ThreatModel
from nonsingular.properties import parse_vnnlib
from nonsingular.verification import Status, verify_property
from tests.support.verification import milp_minimum, mlp, vnnlib


def _instance(seed: int) -> tuple[torch.nn.Sequential, str, float]:
    """A 2-input network, a random box, the unsafe region Y_k >= Y_top at the centre; the exact minimum of
    Y_top - Y_k over the box (MILP): > 0 means unsat."""
    rng = np.random.default_rng(seed)
    model = mlp((2, 10, 10, 3), seed)
    centre = rng.uniform(-1, 1, 2)
    radius = rng.uniform(0.05, 3.0)
    lower, upper = centre - radius, centre + radius
    with torch.no_grad():
        order = model(torch.tensor(centre, dtype=torch.float32)[None])[0].argsort(descending=True).tolist()
    top, k = order[0], order[1 + seed % 2]
    c = np.zeros(3)
    c[top], c[k] = 1.0, -1.0
    exact = milp_minimum(model, lower, upper, c)
    return model, vnnlib(list(lower), list(upper), 3, [[(k, top)]]), exact


def test_answers_agree_with_the_exact_minimum_and_sat_is_rechecked() -> None:
    answers = {Status.SAT: 0, Status.UNSAT: 0}
    for seed in range(10):
        model, text, exact = _instance(seed)
        prop = parse_vnnlib(text)
        result = verify_property(model, prop, timeout=30)
        assert result.status in (Status.SAT, Status.UNSAT, Status.UNKNOWN), result
        if result.status is Status.UNSAT:
            assert exact > 0, (seed, exact)
        if result.status is Status.SAT:
            assert exact <= 1e-6, (seed, exact)
            cex = result.counterexample
            assert cex is not None and bool(prop.cases[0].contains(cex.x[None]).all())
            with torch.no_grad():
                y = model(cex.x.to(torch.float32)[None]).double()
            assert torch.equal(y[0], cex.y)
            assert float(prop.cases[0].unsafe[cex.conjunction].violation(y)[0]) <= 0
        if result.status in answers:
            answers[result.status] += 1
    assert answers[Status.SAT] >= 2 and answers[Status.UNSAT] >= 3, answers  # both kinds were exercised


def test_a_disjunction_is_sat_through_its_reachable_disjunct_only() -> None:
    model = mlp((2, 8, 3), 1)
    lower, upper = [0.0, 0.0], [0.1, 0.1]
    with torch.no_grad():
        order = model(torch.tensor([[0.05, 0.05]])).argsort(dim=1, descending=True)[0].tolist()
    top, second = order[0], order[1]
    # Unreachable: top <= second AND top <= second - 1000 (contradicts nothing but is far); reachable: everything
    text = vnnlib(lower, upper, 3, [[(second, top)]])
    text_far = text.replace(
        f"(assert (or (and (>= Y_{second} Y_{top}))))", "(assert (or (and (<= Y_0 -1000)) (and (>= Y_0 -1e9))))"
    )
    result = verify_property(model, parse_vnnlib(text_far), timeout=30)
    assert result.status is Status.SAT and result.counterexample is not None
    assert result.counterexample.conjunction == 1


def test_zero_width_dimensions_and_far_scales_are_honoured() -> None:
    model = mlp((3, 6, 2), 2)
    text = vnnlib([500.0, 0.1, -3.0], [520.0, 0.1, -3.0], 2, [[(0, 1)], [(1, 0)]])  # one of them always holds
    result = verify_property(model, parse_vnnlib(text), timeout=30)
    assert result.status is Status.SAT
    assert result.counterexample is not None and result.counterexample.x[1].item() == 0.1  # kept exactly


def test_joint_sat_carries_weights_inside_the_ball_and_joint_unsat_is_sound() -> None:
    model = mlp((2, 12, 2), 3)
    with torch.no_grad():
        top = int(model(torch.tensor([[0.2, 0.3]])).argmax())
    text = vnnlib([0.19, 0.29], [0.21, 0.31], 2, [[(1 - top, top)]])
    prop = parse_vnnlib(text)
    assert verify_property(model, prop, timeout=30).status is Status.UNSAT
    big = ThreatModel(eps_w=3.0, weight_mode="relative")
    result = verify_property(model, prop, timeout=30, threat=big)
    assert result.status is Status.SAT and result.counterexample is not None
    cex = result.counterexample
    params = dict(model.named_parameters())
    for name, w in cex.weights.items():
        rho = big.weight_radius(name.removesuffix(".weight"), params[name])
        assert bool(((w - params[name]).abs() <= rho).all())
    with torch.no_grad():
        y = functional_call(model, {**params, **cex.weights}, (cex.x.to(torch.float32)[None],)).double()
    assert float(prop.cases[0].unsafe[0].violation(y)[0]) <= 0
    small = verify_property(model, prop, timeout=30, threat=ThreatModel(eps_w=1e-4, weight_mode="relative"))
    assert small.status is Status.UNSAT


def test_the_clock_is_honoured() -> None:
    model = mlp((2, 64, 64, 64, 2), 4)
    with torch.no_grad():
        top = int(model(torch.tensor([[0.0, 0.0]])).argmax())
    prop = parse_vnnlib(vnnlib([-0.5, -0.5], [0.5, 0.5], 2, [[(1 - top, top)]]))
    result = verify_property(model, prop, timeout=0.01)
    assert result.status in (Status.TIMEOUT, Status.SAT)
    assert result.seconds < 5.0


def test_properties_that_do_not_fit_the_model_are_refused() -> None:
    model = mlp((2, 4, 3), 0)
    with pytest.raises(ValueError, match="the model on the property's 3 inputs"):
        verify_property(model, parse_vnnlib(vnnlib([0.0] * 3, [1.0] * 3, 3, [[(0, 1)]])), timeout=5)
    with pytest.raises(ValueError, match="outputs"):
        verify_property(model, parse_vnnlib(vnnlib([0.0] * 2, [1.0] * 2, 2, [[(0, 1)]])), timeout=5)
    with pytest.raises(ValueError, match="weight-only"):
        verify_property(
            model, parse_vnnlib(vnnlib([0.0] * 2, [1.0] * 2, 3, [[(0, 1)]])), timeout=5, threat=ThreatModel(eps_x=0.1)
        )
