"""Branch and bound under a joint threat: never proves what an attack on inputs and weights breaks, proves at least
what alpha-CROWN proves, and its counterexamples carry weights inside the ball that the model confirms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nonsingular import PGD, ThreatModel, verify
from nonsingular.bounds import margin_bounds
from nonsingular.complete import BaBOptions, BaBStatus, branch_and_bound


def _robustness_spec(label: int, classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unsafe: some class k != label with z_k >= z_label, i.e. rows z_label - z_k <= 0, one disjunct per k."""
    others = [k for k in range(classes) if k != label]
    c = torch.zeros(len(others), classes, dtype=torch.float64)
    for r, k in enumerate(others):
        c[r, label], c[r, k] = 1.0, -1.0
    return c, torch.zeros(len(others), dtype=torch.float64), torch.arange(len(others))


@pytest.fixture(scope="module")
def joint_cases():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    g = torch.Generator().manual_seed(3)
    x = 0.25 + 0.5 * torch.rand(12, 6, generator=g)
    y = model(x).argmax(dim=1)
    threat = ThreatModel(eps_x=0.1, eps_w=0.05, weight_mode="relative")
    results = []
    for i in range(len(x)):
        lo, hi = threat.input_bounds(x[i : i + 1])
        c, d, groups = _robustness_spec(int(y[i]), 4)
        options = BaBOptions(input_split_dims=0 if i % 2 else 10)  # both searches: ReLU splits, input bisection
        res = branch_and_bound(
            model, lo[0], hi[0], c, d, groups=groups, threat=threat, timeout=4.0, seed=i, options=options
        )
        results.append(res)
    return model, x, y, threat, results


def test_joint_unsat_is_never_broken_by_pgd_on_inputs_and_weights(joint_cases) -> None:
    model, x, y, threat, results = joint_cases
    proven = torch.tensor([r.status is BaBStatus.UNSAT for r in results])
    assert proven.any() and (~proven).any(), [r.status for r in results]
    assert {r.mode for r in results} == {"relu", "input"}
    attack = PGD(steps=60, restarts=4, loss="margin", seed=0)(model, x, y, threat)
    check = verify(model, x, y, attack)
    assert check.passed, check.problems
    broken = check.logits.argmax(dim=1) != y
    assert not bool((broken & proven).any())


def test_joint_bab_proves_at_least_what_alpha_crown_proves(joint_cases) -> None:
    model, x, y, threat, results = joint_cases
    with torch.no_grad():
        lower = margin_bounds(model, x.double(), y, threat, method="alpha-crown").lower
    certified = (lower + torch.nn.functional.one_hot(y, 4) * 1e9).amin(dim=1) > 0
    proven = torch.tensor([r.status is BaBStatus.UNSAT for r in results])
    assert bool((proven | ~certified).all())
    assert int(proven.sum()) >= int(certified.sum())


def test_joint_counterexamples_carry_weights_inside_the_ball(joint_cases) -> None:
    model, x, y, threat, results = joint_cases
    sat = [(i, r) for i, r in enumerate(results) if r.status is BaBStatus.SAT]
    assert sat, [r.status for r in results]
    params = dict(model.named_parameters())
    for i, res in sat:
        w = res.witness
        assert w is not None and w.weights
        for name, value in w.weights.items():
            base = params[name].detach().double()
            if name.endswith(".weight"):
                assert bool(((value - base).abs() <= threat.eps_w * base.abs() + 1e-12).all())
            else:
                assert bool((value == base).all())  # eps_b = 0: biases unperturbed
        state = {k: w.weights.get(k, v.detach().double()) for k, v in params.items()}
        logits = torch.func.functional_call(model.double(), state, (w.x[None],))[0]
        model.float()
        assert int(logits.argmax()) != int(y[i]) or bool((logits.max() - logits[y[i]]) >= 0)
        assert bool(((w.x >= x[i].double() - 0.1 - 1e-7) & (w.x <= x[i].double() + 0.1 + 1e-7)).all())
