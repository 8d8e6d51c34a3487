"""Certificates hold for the model as executed (bounds/rounding.py, THEORY.md section 13): networks in the spirit of
Jia and Rinard (SAS 2021) whose exact margin is positive but whose float32 execution flips the class are never
certified, and the forward error bound holds for every summation order and for bf16 execution."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from nonsingular import ThreatModel
from nonsingular.bounds import execution_of, forward_error_bound, margin_bounds
from nonsingular.evaluation import certified_mask, certify
from tests.support import run_cli

METHODS = ["norm", "ibp", "crown", "alpha-crown"]
BIG = 1e8  # float32 spacing 8 here: x + BIG rounds x to a multiple of 8


def _cancellation(threshold: float = 3.5) -> nn.Sequential:
    """z_0 = (x + BIG) - BIG, z_1 = threshold: in exact arithmetic class 0 iff x > threshold; in float32 z_0 is
    x rounded to a multiple of 8 (0 for x < 4, 8 for x > 4)."""
    model = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [0.0]]))
        model[0].bias.copy_(torch.tensor([BIG, BIG]))
        model[2].weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
        model[2].bias.copy_(torch.tensor([0.0, threshold]))
    return model.eval()


def _deep_cancellation() -> nn.Sequential:
    """The cancellation hidden in a wider, deeper net with a joint threat: a big shared offset added and removed
    two layers later, next to ordinary random units."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        for layer in (model[0], model[2], model[4]):
            layer.weight.mul_(0.01)
            layer.bias.zero_()
        model[0].weight[0] = torch.tensor([1.0, 0.0, 0.0])
        model[0].bias[:2] = BIG
        model[0].weight[1] = 0.0
        model[2].weight[:2] = 0.0
        model[2].weight[:, :2] = 0.0  # the big units feed only the two that cancel
        model[2].weight[0, 0] = model[2].weight[1, 1] = 1.0
        model[4].weight[0, :2] = torch.tensor([1.0, -1.0])
        model[4].weight[1] = 0.0
        model[4].bias[1] = 3.5
    return model.eval()


def test_a_cancellation_network_is_not_certified_although_exact_bounds_certify_it():
    model = _cancellation()
    x, y = torch.tensor([[4.5]]), torch.tensor([0])
    threat = ThreatModel(eps_x=0.6, domain=(0.0, 10.0))
    inside = torch.tensor([[3.95]])  # in the box; exact margin 0.45 > 0
    with torch.no_grad():
        assert int(model(x).argmax()) == 0  # correct at the clean point in float32
        assert int(model(inside).argmax()) == 1  # ... but the float32 execution flips the class
    with torch.no_grad():
        assert int(_cancellation().double()(inside.double()).argmax()) == 0  # the float64 network does not
    for method in METHODS[1:]:
        with torch.no_grad():
            bounds = margin_bounds(model, x.double(), y, threat, method)
        assert float(bounds.worst_exact) > 0.39, method  # exact arithmetic certifies
        assert not bool(bounds.certified), method
        assert bool(bounds.removed_by_rounding), method
        assert float(bounds.execution_error[0, 1]) > 8  # at least the rounding of x + BIG seen above
    assert not bool(certified_mask(model, x, y, threat, "crown").any())
    report = certify(model, x, y, threat, methods=METHODS, attack=None)
    for method in METHODS[1:]:
        assert report.methods[method].n_certified == 0
        assert report.methods[method].removed_by_rounding == 1
    payload = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert payload["execution"].startswith("float32") and payload["methods"]["ibp"]["removed_by_rounding"] == 1


def test_a_deeper_cancellation_under_a_joint_threat_is_not_certified():
    model = _deep_cancellation()
    x, y = torch.tensor([[4.5, 0.2, 0.3]]), torch.tensor([0])
    threat = ThreatModel(eps_x=0.6, eps_w=1e-12, domain=(-10.0, 10.0))
    with torch.no_grad():
        assert int(model(torch.tensor([[3.95, 0.2, 0.3]])).argmax()) == 1  # flipped inside the box in float32
    for method in ("ibp", "crown", "alpha-crown"):
        with torch.no_grad():
            bounds = margin_bounds(model, x.double(), y, threat, method)
        assert float(bounds.worst_exact) > 0, method
        assert not bool(bounds.certified), method


def _random_mlp(seed: int, scale: float) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))
    with torch.no_grad():
        for layer in model[::2]:
            layer.weight.mul_(scale)
            layer.bias.mul_(scale * 10)
    return model.eval()


def _forward(model: nn.Sequential, x: Tensor, order: str, dtype: torch.dtype) -> Tensor:
    """The network evaluated in `dtype` with the dot products summed in a chosen order."""
    h = x.to(dtype)
    for layer in model:
        if isinstance(layer, nn.ReLU):
            h = torch.relu(h)
            continue
        w, b = layer.weight.to(dtype), layer.bias.to(dtype)
        if order == "torch":
            h = h @ w.T + b
            continue
        products = h[:, None, :] * w[None]  # each product rounded to dtype
        if order == "reversed":
            products = products.flip(-1)
        terms = torch.cat([products, b[None, :, None].expand(len(h), -1, 1)], dim=-1)
        h = terms.cumsum(-1)[..., -1] if order != "pairwise" else terms.sum(-1)
    return h


@pytest.mark.parametrize("seed", range(3))
def test_the_error_bound_holds_for_every_summation_order_and_for_bf16(seed):
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand((4, 20), generator=g)
    lower, upper = centre - 0.1, centre + 0.1
    x = lower + (upper - lower) * torch.rand((16, 4, 20), generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        executed_model = _random_mlp(seed, scale=30.0).to(dtype)  # large weights: visible cancellation errors
        bound = forward_error_bound(executed_model, lower, upper)
        exact_model = _random_mlp(seed, scale=30.0).to(dtype).double()  # the executed weights, exactly
        with torch.no_grad():
            exact = torch.stack([_forward(exact_model, p.double(), "torch", torch.float64) for p in x])
        for order in ("torch", "sequential", "reversed", "pairwise"):
            with torch.no_grad():
                got = torch.stack([_forward(executed_model, p.to(dtype), order, dtype) for p in x]).double()
            excess = (got - exact).abs() - bound[None]
            assert float(excess.max()) <= 0, (dtype, order)
        assert float(bound.max()) > 0


def test_trained_models_lose_no_certificate_to_rounding(small_mlp, batch):
    x, y = batch
    threat = ThreatModel(eps_x=0.01, eps_w=0.0005)
    with torch.no_grad():
        bounds = margin_bounds(small_mlp, x.double(), y, threat, "crown")
    # an a-priori worst case (gamma_n grows with n): thousandths, against margins of several units
    assert bounds.execution_error is not None and float(bounds.execution_error.max()) < 1e-2
    assert int(bounds.removed_by_rounding.sum()) == 0 and int(bounds.certified.sum()) > 0


def _tf32(t: Tensor) -> Tensor:
    """float32 values rounded to TF32's 10-bit mantissa (nearest, ties away: within u = 2^-11 relative)."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _tf32_forward(model: nn.Sequential, x: Tensor) -> Tensor:
    """The network as TF32 tensor cores run it: operands rounded to TF32, products accumulated in float32."""
    h = x
    for layer in model:
        if isinstance(layer, nn.ReLU):
            h = torch.relu(h)
        else:
            h = (_tf32(h)[:, None, :] * _tf32(layer.weight)[None]).sum(-1) + layer.bias
    return h


def test_reduced_precision_products_use_their_roundoff():
    model = _random_mlp(0, 30.0)
    assert execution_of(model).u_matmul == 2.0**-24
    g = torch.Generator().manual_seed(0)
    lower = torch.rand((4, 20), generator=g)
    upper = lower + 0.1
    x = lower + 0.1 * torch.rand((16, 4, 20), generator=g)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # TF32 products where the backend has them
        tf32 = execution_of(model)
        assert tf32.u_matmul == 2.0**-11 and tf32.reduced and "reduced" in tf32.describe()
        loose = forward_error_bound(model, lower, upper)
    finally:
        torch.set_float32_matmul_precision(previous)
    tight = forward_error_bound(model, lower, upper)
    assert bool((loose > 10 * tight).all())
    exact_model = _random_mlp(0, 30.0).double()
    with torch.no_grad():
        exact = torch.stack([_forward(exact_model, p.double(), "torch", torch.float64) for p in x])
        got = torch.stack([_tf32_forward(model, p) for p in x]).double()
    assert float(((got - exact).abs() - loose[None]).max()) <= 0  # the emulated TF32 execution is covered
    assert float(((got - exact).abs() - tight[None]).max()) > 0  # ... and the float32 bound alone would not be
    assert execution_of(model.double()).u == 2.0**-53


def test_an_op_without_a_rounding_rule_certifies_nothing(monkeypatch):
    from nonsingular.bounds import RULES, IntervalOnlyRule, register_rule

    monkeypatch.setitem(RULES, nn.Tanh, RULES.get(nn.Tanh))  # restored (removed) after the test
    register_rule(nn.Tanh, IntervalOnlyRule(lambda m, lb, ub, lt: (torch.tanh(lb), torch.tanh(ub))))
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    x = torch.rand(4, 3, dtype=torch.float64)
    with torch.no_grad():
        y = model(x.float()).argmax(dim=1)
        bounds = margin_bounds(model, x, y, ThreatModel(eps_x=1e-6), "ibp")
    assert bool((bounds.worst_exact > 0).any()) and not bool(bounds.certified.any())


def test_the_certify_command_reports_the_removed_certificates(monkeypatch, capsys, checkpoint):
    args = ["certify", "-c", str(checkpoint), "--eps-x", "0.01", "--steps", "0", "--method", "ibp"]
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--n-examples", "8")
    assert code == 0, err
    assert "rounding: certificates hold for the model executed in float32 (u = 2^-24); ibp 0 removed" in stdout


@pytest.mark.parametrize("seed", range(4))
def test_float32_random_graphs_are_never_beaten_by_their_own_execution(seed):
    """The soundness fuzzer's cases run in float32: checked attacks and vertices compute the margins the executed
    model really has, and no bound for the executed model may exceed them, with no rounding allowance."""
    from tests.support.graph_fuzz import run_case

    result = run_case(seed, n=4, steps=10, alpha_steps=3, execution="float32")
    assert result.violations == {"ibp": 0, "crown": 0, "alpha-crown": 0, "alpha-crown-final": 0}, result
    assert result.looser == 0, result
