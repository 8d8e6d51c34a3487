"""Bounds on the model as executed in float32 (THEORY.md section 13): a cancellation that float32 rounds away
is not certified, the executed bound is never above the exact one, and it stays below the float32 outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nonsingular import ThreatModel
from nonsingular.bounds import UnsupportedLayerError
from nonsingular.bounds.rounding_bias import FLOAT32_UNIT_ROUNDOFF
from nonsingular.bounds.spec import spec_bounds

U = FLOAT32_UNIT_ROUNDOFF


@pytest.fixture(autouse=True)
def _no_grad():  # type: ignore[no-untyped-def]
    with torch.no_grad():
        yield


def test_a_cancellation_float32_rounds_away_is_not_certified() -> None:
    layer = nn.Linear(3, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0, -1.0]]))
        layer.bias.zero_()
    x = torch.tensor([[2.0**24, 1.0, 2.0**24]], dtype=torch.float64)  # exact: 1; float32 (x0 + x1) - x2: 0
    model = nn.Sequential(layer)
    C, d = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    exact = spec_bounds(model, x, x, C, d, method="crown")
    executed = spec_bounds(model, x, x, C, d, method="crown", executed_roundoff=U)
    assert float(exact) == 1.0
    assert float(executed) <= 0.0  # float32 may compute 0 here, so nothing above 0 may be claimed


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("eps_w", [0.0, 0.01])
def test_executed_bounds_are_below_exact_ones_and_below_float32_outputs(seed: int, eps_w: float) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 3)).eval()
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(2, 20, generator=g, dtype=torch.float64) * 5
    lb, ub = centre - 0.01, centre + 0.01
    C = torch.randn(4, 3, generator=g, dtype=torch.float64)
    d = torch.randn(4, generator=g, dtype=torch.float64)
    threat = ThreatModel(eps_w=eps_w, weight_mode="relative") if eps_w else None
    for method in ("ibp", "crown", "alpha-crown"):
        exact = spec_bounds(model, lb, ub, C, d, threat, method, alpha_steps=5)
        executed = spec_bounds(model, lb, ub, C, d, threat, method, alpha_steps=5, executed_roundoff=U)
        assert bool((executed <= exact + 1e-12).all())
        x = lb + (ub - lb) * torch.rand(64, *lb.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            y = model(x.to(torch.float32)).double()  # (64, 2, 3) executed in float32
        assert bool((executed <= (y @ C.T - d).amin(dim=0)).all())


def test_ops_that_round_outside_the_analysis_are_refused() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + x

    x = torch.zeros(1, 2, dtype=torch.float64)
    C, d = torch.ones(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    with pytest.raises(UnsupportedLayerError, match="rounding analysis"):
        spec_bounds(Residual(), x, x + 1, C, d, executed_roundoff=U)
