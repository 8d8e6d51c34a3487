"""The chain the search bounds is the model: same outputs, and the search decides a Normalize'd MLP exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nonsingular.bounds import UnsupportedLayerError
from nonsingular.complete import BaBStatus, branch_and_bound, chain_from_model, milp_min_value
from nonsingular.models import MLP


class _FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(self.a(torch.flatten(x, 1))))


@pytest.mark.parametrize("make", [lambda: MLP((1, 3, 2), (8, 8), 3, 0.4, 0.3), _FunctionalNet])
def test_chain_computes_the_models_function(make) -> None:
    torch.manual_seed(0)
    model = make().eval()
    chain = chain_from_model(model, (1, 3, 2), None)
    x = torch.rand(16, 1, 3, 2, dtype=torch.float64)
    with torch.no_grad():
        expected = model.double()(x)
    assert torch.allclose(chain.forward(chain.h0(x)), expected, atol=1e-12)


def test_normalized_mlp_decided_as_the_milp_says() -> None:
    torch.manual_seed(1)
    model = MLP((1, 3, 2), (8, 8), 3, 0.4, 0.3).eval()
    lo = torch.full((1, 3, 2), 0.2, dtype=torch.float64)
    hi = torch.full((1, 3, 2), 0.7, dtype=torch.float64)
    c = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    chain = chain_from_model(model, (1, 3, 2), None)
    exact = milp_min_value(
        chain,
        chain.h0(lo[None])[0],
        chain.h0(hi[None])[0],
        c,
        torch.zeros(1, dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.bool),
    ).value
    for shift, expected in ((-0.05, BaBStatus.UNSAT), (0.05, BaBStatus.SAT)):
        res = branch_and_bound(model, lo, hi, c, torch.tensor([exact + shift]), timeout=20)
        assert res.status is expected


def test_unsupported_models_are_refused_naming_the_node() -> None:
    twice = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(UnsupportedLayerError, match="two Linear layers"):
        chain_from_model(twice, (4,), None)
    tanh = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedLayerError, match="Tanh"):
        chain_from_model(tanh, (4,), None)
