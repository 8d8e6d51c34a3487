"""CROWN without autograd writes the concretisation's clamped parts into a reused buffer (bounds/engine.py
`_box_lower`); with autograd it makes fresh tensors; in both, the Linear rules update the coefficients they made
in place (bounds/ops_affine.py). The two modes must give the same bounds bit for bit, and those must lie below
the margins at sampled points of the threat set: random MLPs and CNNs, inputs of both signs (the chord of |h|),
every weight-threat form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nonsingular import ThreatModel
from nonsingular.bounds import margin_bounds
from tests.support.threat_points import margins, tolerance, vertex_logits

_THREATS = [
    {"eps_x": 0.05, "eps_w": 0.01},  # one radius for every weight (the uniform fast paths)
    {"eps_x": 0.05, "eps_w": 0.2, "weight_mode": "relative", "eps_b": 0.1},  # a radius per weight
    {"eps_x": 0.05, "eps_w": 0.02, "weight_ball": "operator"},
    {"eps_x": 0.1},
    {"eps_w": 0.02},  # a point input: the first layer's box is exact
]


def _model(seed: int, g: torch.Generator, k: int) -> nn.Module:
    """A ReLU net on (1, 4, k) inputs."""
    layers: list[nn.Module] = []
    if seed % 4 == 3:  # a convolution in front: dense coefficients reach the input through its adjoint
        layers += [nn.Conv2d(1, 3, 2), nn.ReLU(), nn.Flatten()]
        prev = 3 * 3 * (k - 1)
    else:
        layers.append(nn.Flatten())
        prev = 4 * k
    for width in torch.randint(3, 40, (1 + seed % 3,), generator=g).tolist():
        layers += [nn.Linear(prev, width), nn.ReLU()]
        prev = width
    return nn.Sequential(*layers, nn.Linear(prev, 5)).double()


@pytest.mark.parametrize("seed", range(20))
def test_crown_without_autograd_is_the_autograd_bound_bit_for_bit_and_sound(seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    k = int(torch.randint(2, 8, (1,), generator=g))
    model = _model(seed, g, k)
    domain = (-1.0, 1.0) if seed % 2 else (0.0, 1.0)  # inputs of both signs take the chord of |h|
    threat = ThreatModel(**_THREATS[seed % len(_THREATS)], domain=domain)
    x = domain[0] + (domain[1] - domain[0]) * torch.rand(6, 1, 4, k, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
        fast = margin_bounds(model, x, y, threat, "crown").lower
    plain = margin_bounds(model, x, y, threat, "crown").lower  # the weights require grad: fresh tensors
    assert plain.requires_grad and not fast.requires_grad
    assert torch.equal(fast, plain.detach())
    found = margins(vertex_logits(model, x, threat, n_vertices=64, seed=seed), y)
    assert (fast[None] <= found + tolerance(found)).all()
