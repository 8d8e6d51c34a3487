"""The bounds' API contract: clear errors for what they cannot bound, differentiability, the user's model left
alone, extension through the rule table, and the sensitivity terms the training objective uses.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nonsingular import MLP, ThreatModel
from nonsingular.bounds import (
    RULES,
    IntervalOnlyRule,
    UnsupportedLayerError,
    margin_bounds,
    norm_bounds,
    register_ibp_rule,
    register_rule,
    sensitivity_terms,
)
from nonsingular.models import Normalize
from tests.support.threat_points import margins, tolerance, vertex_logits

METHODS = ["norm", "ibp", "crown"]
THREAT = ThreatModel(eps_x=0.02, eps_w=0.01, eps_b=0.01)


def _tiny(activation: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(Normalize(0.5, 0.5), nn.Flatten(), nn.Linear(4, 3), activation, nn.Linear(3, 2)).double()


def _data(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.rand(n, 4, dtype=torch.float64), torch.randint(0, 2, (n,))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("activation", [nn.Tanh(), nn.GELU(), nn.Sigmoid()])
def test_non_relu_activation_is_refused_by_name(method, activation):
    x, y = _data()
    with pytest.raises(ValueError, match=rf"'3' \({type(activation).__name__}\)"):
        margin_bounds(_tiny(activation), x, y, THREAT, method)


def test_ibp_error_says_how_to_add_a_rule():
    x, y = _data()
    with pytest.raises(UnsupportedLayerError, match=r"register_rule\(op, IntervalOnlyRule\(fn\)\)"):
        margin_bounds(_tiny(nn.Tanh()), x, y, THREAT, "ibp")


def test_registered_rule_extends_ibp(monkeypatch):
    """A monotone activation becomes boundable by registering one rule; the result is still sound."""

    def tanh_rule(module, lb, ub, layer_threat):
        return torch.tanh(lb), torch.tanh(ub)

    monkeypatch.setitem(RULES, nn.Tanh, IntervalOnlyRule(tanh_rule))
    register_rule(nn.Tanh, IntervalOnlyRule(tanh_rule))  # the public way; monkeypatch restores the table afterwards
    model = _tiny(nn.Tanh())
    x, y = _data()
    with torch.no_grad():
        lower = margin_bounds(model, x, y, THREAT, "ibp").lower
    found = margins(vertex_logits(model, x, THREAT, n_vertices=32), y)
    assert (lower[None] <= found + tolerance(found)).all()
    with pytest.raises(UnsupportedLayerError):
        margin_bounds(model, x, y, THREAT, "crown")  # CROWN needs a relaxation, not a box rule


def test_the_deprecated_interval_registration_warns_and_fills_the_one_table(monkeypatch):
    """register_ibp_rule still works for code written before the two tables became one, and says what replaces it."""
    import nonsingular.bounds.registry as registry

    def tanh_rule(module, lb, ub, layer_threat):
        return torch.tanh(lb), torch.tanh(ub)

    monkeypatch.setattr(registry, "_warned_ibp_rule", False)
    monkeypatch.setitem(RULES, nn.Tanh, IntervalOnlyRule(tanh_rule))
    with pytest.warns(DeprecationWarning, match=r"register_rule\(layer_type, IntervalOnlyRule\(rule\)\)"):
        register_ibp_rule(nn.Tanh, tanh_rule)
    assert isinstance(RULES[nn.Tanh], IntervalOnlyRule) and RULES[nn.Tanh].fn is tanh_rule
    x, y = _data()
    assert margin_bounds(_tiny(nn.Tanh()), x, y, THREAT, "ibp").lower.shape == (5, 2)


def test_subclass_with_its_own_forward_is_refused():
    class Doubled(nn.Linear):
        def forward(self, h):
            return 2 * super().forward(h)

    torch.manual_seed(0)
    model = nn.Sequential(Normalize(0.5, 0.5), Doubled(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    x, y = _data()
    for method in METHODS:
        with pytest.raises(UnsupportedLayerError, match="Doubled"):
            margin_bounds(model, x, y, THREAT, method)


def test_models_the_engine_cannot_follow_are_refused_in_one_line():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, h):
            return self.fc(h) + h[:, :2]

    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, h):
            return self.fc(h) if h.sum() > 0 else -self.fc(h)

    x, y = _data()
    with pytest.raises(UnsupportedLayerError, match=r"norm bound .*nn\.Sequential"):
        margin_bounds(Residual().double(), x, y, THREAT, "norm")
    for method in ["ibp", "crown", "alpha-crown"]:
        # Slicing has no rule: the message names the op and the file a rule goes in.
        with pytest.raises(UnsupportedLayerError, match=r"op 'getitem' .*ops_structure\.py") as err:
            margin_bounds(Residual().double(), x, y, THREAT, method)
        assert "\n" not in str(err.value)
        with pytest.raises(UnsupportedLayerError, match=r"cannot trace Branching with torch\.fx") as err:
            margin_bounds(Branching().double(), x, y, THREAT, method)
        assert "\n" not in str(err.value)

    class CustomSequential(nn.Sequential):
        def forward(self, h):
            return super().forward(h) * 2

    with pytest.raises(UnsupportedLayerError, match="custom forward"):
        margin_bounds(CustomSequential(nn.Linear(4, 2)).double(), x, y, THREAT, "norm")
    # The engine traces the custom forward (a Linear, then a scaling) and bounds it soundly.
    model = CustomSequential(nn.Linear(4, 2)).double()
    lower = margin_bounds(model, x, y, THREAT, "crown").lower
    found = margins(vertex_logits(model, x, THREAT, n_vertices=32), y)
    assert (lower[None] <= found + tolerance(found)).all()


def test_bad_arguments():
    x, y = _data()
    with pytest.raises(ValueError, match="unknown bound method"):
        margin_bounds(_tiny(nn.ReLU()), x, y, THREAT, "zonotope")
    with pytest.raises(ValueError, match="examples"):
        margin_bounds(_tiny(nn.ReLU()), x, y[:2], THREAT, "ibp")
    with pytest.raises(ValueError, match="domain"):
        margin_bounds(_tiny(nn.ReLU()), x + 2, y, THREAT, "ibp")


@pytest.mark.parametrize("method", METHODS)
def test_model_is_left_alone(small_mlp, batch, method):
    x, y = batch
    before = {k: v.clone() for k, v in small_mlp.state_dict().items()}
    small_mlp.train()
    bounds = margin_bounds(small_mlp, x[:8].double(), y[:8], THREAT, method)
    assert small_mlp.training
    small_mlp.eval()
    assert bounds.lower.dtype == torch.float64
    assert all(torch.equal(before[k], v) and v.dtype == torch.float32 for k, v in small_mlp.state_dict().items())
    # float32 inputs give float32 bounds
    assert margin_bounds(small_mlp, x[:8], y[:8], THREAT, method).lower.dtype == torch.float32


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_bounds_are_differentiable_in_the_weights(method, mode):
    torch.manual_seed(0)
    model = MLP((4,), (5, 5), 3)
    x, y = torch.rand(6, 4), torch.randint(0, 3, (6,))
    threat = ThreatModel(eps_x=0.02, eps_w=0.05 if mode == "relative" else 0.01, weight_mode=mode, eps_b=0.01)
    bounds = margin_bounds(model, x, y, threat, method)
    bounds.loss_increase_bound().sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_sensitivity_terms_split_theorem2():
    model = _tiny(nn.ReLU())
    x, y = _data()
    for threat in (THREAT, THREAT.model_copy(update={"weight_ball": "operator"}), THREAT.input_only()):
        with torch.no_grad():
            bounds = norm_bounds(model, x, threat, y)
            r_x, r_w, log_domain = sensitivity_terms(model, x, threat)
            log_r_x, log_r_w, _ = sensitivity_terms(model, x, threat, log_domain=True)
        assert not log_domain
        assert torch.allclose(r_x + r_w, bounds.logit_change, rtol=1e-12)
        assert torch.allclose(log_r_x.exp(), r_x, rtol=1e-9)
        if float(r_w.min()) > 0:
            assert torch.allclose(log_r_w.exp(), r_w, rtol=1e-9)
        assert (bounds.loss_change == 2 * bounds.logit_change).all()


@pytest.mark.parametrize("log_domain", [False, True])
@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_sensitivity_terms_have_finite_gradients(log_domain, mode):
    """Including a zero bias (fresh initialisations) and relative radii (whose gradient flows through |W|)."""
    torch.manual_seed(0)
    model = MLP((4,), (6, 6), 3)
    with torch.no_grad():
        model[2].bias.zero_()
    x = torch.rand(8, 4)
    threat = ThreatModel(eps_x=0.03, eps_w=0.05 if mode == "relative" else 0.002, weight_mode=mode, eps_b=0.0)
    r_x, r_w, _ = sensitivity_terms(model, x, threat, log_domain=log_domain)
    (r_x.mean() + r_w.mean()).backward()
    for name, p in model.named_parameters():
        if name != "6.bias":  # the last bias moves no logit difference, so E_L does not depend on it
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model[2].weight.grad.abs().sum() > 0


def test_log_domain_survives_depth_where_products_overflow():
    torch.manual_seed(0)
    model = MLP((4,), (8,) * 40, 3)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(20)
    x = torch.rand(2, 4)
    threat = ThreatModel(eps_x=0.01, eps_w=0.001)
    with torch.no_grad():
        plain = sensitivity_terms(model, x, threat)
        logs = sensitivity_terms(model, x, threat, log_domain=True)
    assert torch.isinf(plain.r_x).all()
    assert torch.isfinite(logs.r_x).all() and torch.isfinite(logs.r_w).all()
    assert (logs.r_x > 88).all()  # log of a number float32 cannot hold


def test_per_layer_subset_threat_only_perturbs_chosen_layers():
    """A threat on the last layer only: IBP's and CROWN's margins then equal the clean margins minus exactly
    the last layer's Lemma 1 term (the rest of the network is fixed and the input too)."""
    model = _tiny(nn.ReLU())
    x, y = _data()
    threat = ThreatModel(eps_w=0.05, layers=["4"])
    with torch.no_grad():
        h = model[:4](x)
        clean = model(x)
        rho_rows = 0.05 * h.abs().sum(dim=1, keepdim=True)  # Lemma 1: rho ||h||_1 for each of rows y and k
        expected = margins(clean, y) - 2 * rho_rows
        expected = expected.masked_fill(torch.nn.functional.one_hot(y, 2).bool(), 0.0)
        for method in ("ibp", "crown"):
            assert torch.allclose(margin_bounds(model, x, y, threat, method).lower, expected, atol=1e-10)


def test_known_zero_terms_stay_exactly_zero_in_the_log_domain():
    """eps_x = 0 or eps_w = 0 gives R_x = 0 or R_w = 0 exactly (log: -inf), not a floor grown by the norms."""
    torch.manual_seed(0)
    model = MLP((4,), (8,) * 6, 3)
    x = torch.rand(3, 4)
    for threat, zero in ((ThreatModel(eps_w=0.01), "r_x"), (ThreatModel(eps_x=0.01), "r_w")):
        logs = sensitivity_terms(model, x, threat, log_domain=True)
        plain = sensitivity_terms(model, x, threat)
        assert torch.isneginf(getattr(logs, zero)).all() and (getattr(plain, zero) == 0).all()
        other = "r_w" if zero == "r_x" else "r_x"
        getattr(logs, other).sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()


def test_norm_bound_refuses_sum_pooling():
    """AvgPool2d with divisor_override=1 sums its window: not non-expansive, so Theorem 2's recursion would lie."""
    pool = nn.AvgPool2d(2, divisor_override=1)
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), pool, nn.Flatten(), nn.Linear(4, 2)).double()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    with pytest.raises(UnsupportedLayerError, match="AvgPool2d"):
        margin_bounds(model, x, y, THREAT, "norm")
    with torch.no_grad():
        lower = margin_bounds(model, x, y, THREAT, "ibp").lower  # monotone all the same: IBP is fine
    found = margins(vertex_logits(model, x, THREAT, n_vertices=16), y)
    assert (lower[None] <= found + tolerance(found)).all()
