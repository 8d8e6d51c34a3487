"""The checker's chunked per-example path: one tampered example anywhere in any chunk fails the check, the
reported violation is exactly the largest per-example one (computed example by example here), for MLPs (Lemma 1
weights) and CNNs (explicit per-example kernels), element-wise and operator balls, one chunk or many."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from nonsingular import PGD, ThreatModel, check_attack
from nonsingular.attacks import AttackResult
from nonsingular.attacks.perturbation import LayerPath

BALLS = {"elementwise": {"eps_w": 0.01, "eps_b": 0.01}, "operator": {"eps_w": 0.05, "weight_ball": "operator"}}
#: None: the default chunks (every example in one); 5: ten chunks of the 48 examples, the last one short.
CHUNKS = [None, 5]


def _cnn() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(27, 10)).eval()


def _setup(kind: str, small_mlp: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], ball: str):
    x, y = batch
    model, layer = (small_mlp, "2") if kind == "mlp" else (_cnn(), "0")
    if kind == "cnn":
        x = x.reshape(-1, 1, 8, 8)
    result = PGD(steps=3, seed=1)(model, x, y, ThreatModel(eps_x=0.03, **BALLS[ball]))
    assert result.paths[layer] == ("lemma1" if kind == "mlp" else "explicit")
    return model, x, y, result, layer


def _reference_violation(model: nn.Module, result: AttackResult, pname: str) -> float:
    """The largest violation of parameter `pname`, example by example, with the ball's own definition."""
    layer, _, kind = pname.rpartition(".")
    base = dict(model.named_parameters())[pname].detach()
    threat, worst = result.threat, 0.0
    for i in range(len(result.x_adv)):
        w = result.perturbed_weights(i, i + 1)[pname][0]
        if kind == "weight" and threat.weight_ball.value == "operator":
            rows = (w - base).reshape(base.shape[0], -1).abs().sum(dim=1)
            worst = max(worst, float((rows - threat.operator_radius(layer, base)).max()))
        else:
            rho = threat.bias_radius(base) if kind == "bias" else threat.weight_radius(layer, base)
            worst = max(worst, float((base - rho - w).max()), float((w - (base + rho)).max()))
    return worst


def _tamper(result: AttackResult, layer: str, example: int, ball: str) -> None:
    """Push one entry (one row) of one example's perturbation to 1.5 times the edge of its ball."""
    block = next(b for b in result.weight_blocks() if b.name == layer)
    with torch.no_grad():
        if block.path is LayerPath.LEMMA1:
            block.t[example, 1] = 1.5
        elif ball == "elementwise":
            block.delta[example].view(-1)[4] = 1.5 * float(block.rho.reshape(-1)[4])
        else:
            block.delta[example, 1] = 1.5 * float(block.e) / block.weight[0].numel()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("ball", list(BALLS))
@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_one_tampered_example_fails_with_the_exact_violation(small_mlp, batch, kind, ball, chunk_size):
    model, x, y, result, layer = _setup(kind, small_mlp, batch, ball)
    honest = check_attack(model, x, y, result, chunk_size=chunk_size)
    assert honest.passed, honest.problems
    for pname, v in honest.weight_violation.items():
        assert v == _reference_violation(model, result, pname) == 0.0
    _tamper(result, layer, 37, ball)  # in the 8th of ten chunks of 5
    check = check_attack(model, x, y, result, chunk_size=chunk_size)
    pname = f"{layer}.weight"
    assert not check.passed
    assert check.weight_violation[pname] > 0
    assert check.weight_violation[pname] == _reference_violation(model, result, pname)
    assert any(p.startswith(f"{pname} leaves its ball") for p in check.problems), check.problems


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_one_tampered_input_or_logit_fails(small_mlp, batch, kind, chunk_size):
    model, x, y, result, _ = _setup(kind, small_mlp, batch, "elementwise")
    x_adv = result.x_adv.clone()
    x_adv[43].view(-1)[int((x[43].flatten() == 0).nonzero()[0])] = 0.06  # a black pixel, box [0, 0.03]
    check = check_attack(model, x, y, dataclasses.replace(result, x_adv=x_adv), chunk_size=chunk_size)
    assert not check.passed and check.input_violation == pytest.approx(0.03, abs=1e-6)
    logits = result.logits.clone()
    logits[46, 3] += 0.01
    check = check_attack(model, x, y, dataclasses.replace(result, logits=logits), chunk_size=chunk_size)
    assert not check.passed and any(p.startswith("recomputed logits differ") for p in check.problems)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_weight_of_one_example_fails(small_mlp, batch, kind, value):
    model, x, y, result, layer = _setup(kind, small_mlp, batch, "elementwise")
    block = next(b for b in result.weight_blocks() if b.name == layer)
    with torch.no_grad():
        (block.t if block.path is LayerPath.LEMMA1 else block.delta)[21].view(-1)[0] = value
    check = check_attack(model, x, y, result, chunk_size=5)
    assert not check.passed and f"{layer}.weight has non-finite perturbed values" in check.problems


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_chunking_does_not_change_the_recomputed_logits(small_mlp, batch, kind):
    model, x, y, result, _ = _setup(kind, small_mlp, batch, "elementwise")
    whole = check_attack(model, x, y, result)
    for chunk_size in (1, 5, 48):
        part = check_attack(model, x, y, result, chunk_size=chunk_size)
        assert part.passed and part.weight_violation == whole.weight_violation
        torch.testing.assert_close(part.logits, whole.logits, rtol=0, atol=whole.logit_tolerance)


def test_a_witness_of_the_wrong_shape_fails(small_mlp, batch):
    model, x, y, result, _ = _setup("mlp", small_mlp, batch, "elementwise")

    @dataclasses.dataclass
    class Misshapen:
        inner: AttackResult
        x_adv: torch.Tensor
        logits: torch.Tensor
        threat: ThreatModel

        def perturbed_weights(self, start: int = 0, stop: int | None = None) -> dict[str, torch.Tensor]:
            weights = self.inner.perturbed_weights(start, stop)
            weights["2.weight"] = weights["2.weight"][:, :-1]  # one row short
            return weights

    check = check_attack(model, x, y, Misshapen(result, result.x_adv, result.logits, result.threat), chunk_size=5)
    assert not check.passed
    assert any(p.startswith("2.weight has shape") for p in check.problems), check.problems
