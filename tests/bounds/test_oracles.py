"""Analytic oracles: networks whose worst case under the threat is known in closed form.

A single Linear layer: for a fixed input x, Lemma 1 gives the worst weights in closed form, and what remains is
concave in x, so the exact minimum sits at a vertex of the input box (enumerated here).
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from nonsingular import ThreatModel
from nonsingular.bounds import loss_bound_from_margins, margin_bounds, norm_bounds, sensitivity_terms
from nonsingular.models import Normalize
from tests.support.threat_points import margins

TOL = 1e-10


def _linear_model(n: int, k: int, mean: float, std: float, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(Normalize(mean, std), nn.Flatten(), nn.Linear(n, k)).double()
    with torch.no_grad():
        model[2].bias.normal_()
    return model


def _box_vertices(lb: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
    """(2^n, n) every vertex of the box [lb, ub] of one example (n,)."""
    picks = torch.tensor(list(itertools.product([0, 1], repeat=lb.numel())), dtype=torch.bool)
    return torch.where(picks, ub, lb)


def _exact_margin_lower(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """(N, K) exact min over the threat set of z'_y - z'_k for Normalize -> Flatten -> Linear."""
    linear, norm = model[2], model[0]
    w, b = linear.weight.detach(), linear.bias.detach()
    lb, ub = threat.input_bounds(x)
    rows = []
    for i in range(len(x)):
        v = norm(_box_vertices(lb[i], ub[i]))  # (V, n) normalised vertices
        c = w[y[i]] - w  # (K, n)
        if threat.weight_ball.value == "elementwise":
            rho = threat.weight_radius("2", w)
            drop = v.abs() @ (rho[y[i]] + rho).T  # (V, K): Lemma 1 for rows y and k
        else:
            drop = 2 * threat.operator_radius("2", w) * v.abs().amax(dim=1, keepdim=True)
        beta = threat.bias_radius(b)
        bias = b[y[i]] - b - (0 if beta is None else beta[y[i]] + beta)
        rows.append((v @ c.T - drop).amin(dim=0) + bias)
    return torch.stack(rows).masked_fill(F.one_hot(y, w.shape[0]).bool(), 0.0)


@pytest.mark.parametrize("mode", ["absolute", "relative"])
@pytest.mark.parametrize("mean", [0.0, 0.5])
def test_single_linear_layer_crown_is_exact(mode, mean):
    model = _linear_model(4, 3, mean=mean, std=0.5)
    x = torch.rand(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    threat = ThreatModel(eps_x=0.2, eps_w=0.3 if mode == "relative" else 0.1, weight_mode=mode, eps_b=0.05)
    exact = _exact_margin_lower(model, x, y, threat)
    with torch.no_grad():
        crown = margin_bounds(model, x, y, threat, "crown").lower
        ibp = margin_bounds(model, x, y, threat, "ibp").lower
        norm = margin_bounds(model, x, y, threat, "norm").lower
    assert torch.allclose(crown, exact, atol=TOL), (crown - exact).abs().max()
    assert (ibp <= exact + TOL).all() and (norm <= exact + TOL).all()
    if mean == 0.0:
        # Non-negative inputs: the interval product is exact too.
        assert torch.allclose(ibp, exact, atol=TOL)


def test_single_linear_layer_exact_value_is_reached():
    """The oracle itself: the vertex and the Lemma 1 weights it implies give exactly that margin."""
    model = _linear_model(3, 2, mean=0.5, std=0.5)
    x = torch.rand(1, 3, dtype=torch.float64)
    y = torch.tensor([1])
    threat = ThreatModel(eps_x=0.2, eps_w=0.1, eps_b=0.05)
    exact = _exact_margin_lower(model, x, y, threat)[0, 0]
    w, b = model[2].weight.detach(), model[2].bias.detach()
    lb, ub = threat.input_bounds(x)
    best = torch.tensor(float("inf"), dtype=torch.float64)
    for v in _box_vertices(lb[0], ub[0]):
        s = torch.sign(model[0](v)) + (model[0](v) == 0).double()
        w_adv = w.clone()
        w_adv[1] -= 0.1 * s  # row y shrinks along sign(h'), row k grows (Lemma 1)
        w_adv[0] += 0.1 * s
        b_adv = b + torch.tensor([0.05, -0.05], dtype=torch.float64)
        z = functional_call(model, {"2.weight": w_adv, "2.bias": b_adv}, (v[None],))[0]
        best = torch.minimum(best, z[1] - z[0])
    assert torch.isclose(best, exact, atol=TOL)


def test_single_linear_operator_ball_is_sound_and_close():
    model = _linear_model(4, 3, mean=0.5, std=0.5)
    x = torch.rand(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    threat = ThreatModel(eps_x=0.1, eps_w=0.2, weight_ball="operator")
    exact = _exact_margin_lower(model, x, y, threat)
    for method in ("ibp", "crown", "norm"):
        with torch.no_grad():
            lower = margin_bounds(model, x, y, threat, method).lower
        assert (lower <= exact + TOL).all(), method


def test_input_only_linear_matches_dual_norm_formula():
    """auto_LiRPA's oracle: without clipping, the margin lower bound is C x + b_y - b_k - eps ||C||_1 (exact)."""
    model = _linear_model(5, 3, mean=0.0, std=1.0)
    x = torch.rand(4, 5, dtype=torch.float64)
    y = torch.tensor([2, 0, 1, 2])
    eps = 0.3
    threat = ThreatModel(eps_x=eps, domain=(-10.0, 10.0))
    w, b = model[2].weight.detach(), model[2].bias.detach()
    c = w[y][:, None, :] - w[None]
    expected = (c @ x[:, :, None]).squeeze(-1) + b[y][:, None] - b[None] - eps * c.abs().sum(-1)
    expected = expected.masked_fill(F.one_hot(y, 3).bool(), 0.0)
    for method in ("ibp", "crown", "norm"):
        with torch.no_grad():
            lower = margin_bounds(model, x, y, threat, method).lower
        assert torch.allclose(lower, expected, atol=TOL), method


def test_theorem2_recursion_by_hand():
    """E_L and A_L recomputed from THEORY.md section 4 for a 2-layer net without normalisation or clipping."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.rand(2, 3, dtype=torch.float64)
    eps_x, eps_w, eps_b = 0.1, 0.01, 0.02
    threat = ThreatModel(eps_x=eps_x, eps_w=eps_w, eps_b=eps_b, domain=(-5.0, 5.0))
    w1, b1, w2 = model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach()

    def op(w):
        return w.abs().sum(dim=1).max()

    a0 = x.abs().amax(dim=1) + eps_x
    eta1, eta2 = 3 * eps_w, 4 * eps_w  # element-wise absolute: n_in * eps_w
    a1 = (op(w1) + eta1) * a0 + b1.abs().max() + eps_b
    e1 = op(w1) * eps_x + eta1 * a0 + eps_b
    e2 = op(w2) * e1 + eta2 * a1 + eps_b
    with torch.no_grad():
        bounds = norm_bounds(model, x, threat)
        r_x, r_w, _ = sensitivity_terms(model, x, threat)
    assert torch.allclose(bounds.logit_change, e2, atol=TOL)
    assert torch.allclose(bounds.loss_change, 2 * e2, atol=TOL)
    assert torch.allclose(r_x, eps_x * op(w1) * op(w2), atol=TOL)
    assert torch.allclose(r_x + r_w, e2, atol=TOL)


@pytest.mark.parametrize("method", ["norm", "ibp", "crown"])
def test_bounds_collapse_to_clean_values_at_zero_eps(small_mlp, batch, method):
    x, y = batch
    x = x.double()
    threat = ThreatModel(eps_x=0.0, eps_w=0.0)
    with torch.no_grad():
        bounds = margin_bounds(small_mlp, x, y, threat, method)
        clean = copy.deepcopy(small_mlp).double()(x)
    assert torch.allclose(bounds.lower, margins(clean, y), atol=1e-9)
    # In exact arithmetic the loss bound collapses to the clean loss; the executed (float32) model's bound may
    # exceed it by at most the margins' execution error (cross-entropy is 1-Lipschitz in the margins' max norm).
    clean_loss = torch.nn.functional.cross_entropy(clean, y, reduction="none")
    exact = loss_bound_from_margins(bounds.lower, y) - clean_loss
    assert exact.abs().max() < 1e-9
    error = 0.0 if bounds.execution_error is None else float(bounds.execution_error.max())
    executed = bounds.loss_increase_bound()
    assert bool((executed >= exact - 1e-12).all()) and float((executed - exact).max()) <= error + 1e-12
    assert torch.equal(bounds.certified, clean.argmax(1) == y)
    if method == "norm":
        with torch.no_grad():
            nb = norm_bounds(small_mlp, x, threat)
        assert float(nb.logit_change.abs().max()) == 0.0


@pytest.mark.parametrize("method", ["norm", "ibp", "crown"])
def test_bounds_shrink_as_the_threat_grows(small_mlp, batch, method):
    x, y = batch[0][:16].double(), batch[1][:16]
    previous = None
    for scale in (0.0, 0.25, 0.5, 1.0):
        threat = ThreatModel(eps_x=0.02 * scale, eps_w=0.001 * scale, eps_b=0.001 * scale)
        with torch.no_grad():
            lower = margin_bounds(small_mlp, x, y, threat, method).lower
        if previous is not None:
            assert (lower <= previous + 1e-9).all()
        previous = lower


def test_crown_is_at_least_as_tight_as_ibp_on_a_trained_mlp(small_mlp, batch):
    x, y = batch[0].double(), batch[1]
    for kwargs in ({"eps_x": 0.02, "eps_w": 0.001}, {"eps_w": 0.05, "weight_mode": "relative"}, {"eps_x": 0.03}):
        threat = ThreatModel(**kwargs)
        with torch.no_grad():
            crown = margin_bounds(small_mlp, x, y, threat, "crown")
            ibp = margin_bounds(small_mlp, x, y, threat, "ibp")
        assert (crown.lower >= ibp.lower - 1e-9).all()
        assert crown.certified.sum() >= ibp.certified.sum()
