"""The checker can say no: tampered inputs, weights and logits, and non-finite numbers each fail `passed`.

Every tampered case starts from an honest attack result that passes (the control), changes one thing the
attack reports, and checks that the checker names that thing.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from nonsingular import PGD, ThreatModel, check_attack
from nonsingular.attacks import AttackResult
from nonsingular.attacks.perturbation import LayerPath, WeightBlock

BALLS = {
    "elementwise": {"eps_w": 0.01},
    "operator": {"eps_w": 0.05, "weight_ball": "operator"},
}


def _conv_net() -> nn.Module:
    """Convolutions take the explicit per-example path."""
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 10)).eval()


def _attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **threat: object) -> AttackResult:
    result = PGD(steps=3, seed=1)(model, x, y, ThreatModel(eps_x=0.03, **threat))
    assert check_attack(model, x, y, result).passed, "the untampered result must pass (control)"
    return result


def _push_out(block: WeightBlock) -> None:
    """Move the block's whole perturbation to 1.5 times the edge of its ball."""
    with torch.no_grad():
        if block.path is LayerPath.LEMMA1:
            block.t.fill_(1.5)
        elif block.rho is not None:
            block.delta.copy_(1.5 * block.rho.expand_as(block.delta))
        else:
            block.delta.fill_(1.5 * float(block.e) / block.weight[0].numel())


def _case(name: str, small_mlp: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    x, y = batch
    if name == "explicit":
        x4 = x.reshape(-1, 1, 8, 8)
        return _conv_net(), x4, y, "per-example", "explicit", "0"
    scope = "shared" if name == "shared" else "per-example"
    return small_mlp, x, y, scope, scope if scope == "shared" else "lemma1", "2"


@pytest.mark.parametrize("ball", list(BALLS))
@pytest.mark.parametrize("path", ["lemma1", "explicit", "shared"])
def test_tampered_weights_fail(small_mlp, batch, ball, path):
    model, x, y, scope, want, layer = _case(path, small_mlp, batch)
    result = _attack(model, x, y, scope=scope, **BALLS[ball])
    assert result.paths[layer] == want
    block = next(b for b in result.weight_blocks() if b.name == layer)
    _push_out(block)
    check = check_attack(model, x, y, result)
    assert not check.passed
    assert check.weight_violation[f"{layer}.weight"] > 0
    assert any(p.startswith(f"{layer}.weight leaves its ball") for p in check.problems), check.problems


def test_tampered_bias_fails(small_mlp, batch):
    x, y = batch
    result = _attack(small_mlp, x, y, eps_w=0.01, eps_b=0.01, scope="shared")
    block = next(b for b in result.weight_blocks() if b.name == "4")
    with torch.no_grad():
        block.delta_b[3] = 0.02
    check = check_attack(small_mlp, x, y, result)
    assert not check.passed and check.weight_violation["4.bias"] == pytest.approx(0.01, rel=1e-3)


@pytest.mark.parametrize("scope", ["per-example", "shared"])
def test_tampered_inputs_fail(small_mlp, batch, scope):
    x, y = batch
    result = _attack(small_mlp, x, y, eps_w=0.01, scope=scope)
    x_adv = result.x_adv.clone()
    pixel = int((x[5].flatten() == 0).nonzero()[0])  # a black pixel: its box is [0, 0.03]
    x_adv[5].view(-1)[pixel] = 0.06
    check = check_attack(small_mlp, x, y, dataclasses.replace(result, x_adv=x_adv))
    assert not check.passed
    assert check.input_violation == pytest.approx(0.03, abs=1e-6)
    assert any(p.startswith("inputs leave the eps_x box") for p in check.problems)


def test_tampered_logits_fail(small_mlp, batch):
    x, y = batch
    result = _attack(small_mlp, x, y, eps_w=0.01)
    logits = result.logits.clone()
    logits[7, 2] += 0.01  # ~1e-3 of the logits' scale: no rounding explains it
    check = check_attack(small_mlp, x, y, dataclasses.replace(result, logits=logits))
    assert not check.passed and check.max_logit_gap > check.logit_tolerance
    assert any(p.startswith("recomputed logits differ") for p in check.problems)


def test_non_finite_numbers_fail(small_mlp, batch):
    x, y = batch
    result = _attack(small_mlp, x, y, eps_w=0.01)
    logits = result.logits.clone()
    logits[0, 0] = float("nan")
    check = check_attack(small_mlp, x, y, dataclasses.replace(result, logits=logits))
    assert not check.passed and "the attack's logits are not all finite" in check.problems

    x_adv = result.x_adv.clone()
    x_adv[1].view(-1)[1] = float("inf")
    check = check_attack(small_mlp, x, y, dataclasses.replace(result, x_adv=x_adv))
    assert not check.passed and "the adversarial inputs are not all finite" in check.problems

    block = next(b for b in result.weight_blocks() if b.name == "2")
    with torch.no_grad():
        block.t[0, 0] = float("nan")
    check = check_attack(small_mlp, x, y, result)
    assert not check.passed and "2.weight has non-finite perturbed values" in check.problems


@pytest.mark.parametrize("ball", ["elementwise", "operator"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_explicit_weights_fail(small_mlp, batch, ball, value):
    """An infinite or NaN entry of an explicit (shared-scope) perturbation is named as non-finite in both
    balls (the violation's reductions carry it; no separate finiteness pass)."""
    x, y = batch
    result = _attack(small_mlp, x, y, eps_w=0.01, weight_ball=ball, scope="shared")
    block = next(b for b in result.weight_blocks() if b.name == "2")
    with torch.no_grad():
        block.delta[1, 3] = value
    check = check_attack(small_mlp, x, y, result)
    assert not check.passed and "2.weight has non-finite perturbed values" in check.problems


def test_perturbed_layer_outside_the_threat_fails(small_mlp, batch):
    x, y = batch
    result = _attack(small_mlp, x, y, eps_w=0.01, layers=["4"])
    narrower = result.threat.model_copy(update={"layers": ("6",)})
    check = check_attack(small_mlp, x, y, dataclasses.replace(result, threat=narrower))
    assert not check.passed and "4.weight is perturbed but outside the threat's layers" in check.problems
