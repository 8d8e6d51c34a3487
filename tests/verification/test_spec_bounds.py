"""spec_bounds: sound over arbitrary boxes and spec rows (sampled points, box corners, weight-ball vertices and a
gradient descent on the objective never go below it), ordered ibp <= crown <= alpha-crown, and identical to
margin_bounds when the spec is the margin spec and the box is the threat's ball."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn

from nonsingular import ThreatModel
from nonsingular.bounds import margin_bounds
from nonsingular.bounds.margins import margin_spec
from nonsingular.bounds.spec import spec_bounds
from tests.support.threat_points import vertex_logits


def _mlp(seed: int, widths: tuple[int, ...] = (3, 12, 10, 4)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).double().eval()


def _cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3), nn.ReLU()
        )
        .double()
        .eval()
    )


def _box(shape: tuple[int, ...], seed: int, scale: float) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    centre = (torch.rand(shape, generator=g, dtype=torch.float64) - 0.5) * 2 * scale
    radius = torch.rand(shape, generator=g, dtype=torch.float64) * scale * 0.3
    radius[..., 0] = 0.0  # a zero-width dimension
    return centre - radius, centre + radius


def _descend(model: nn.Module, lb: Tensor, ub: Tensor, C: Tensor, d: Tensor, steps: int = 60) -> Tensor:
    """(N, S) values of C f(x) - d at points a projected sign-gradient descent reaches from the centre."""
    out = []
    for s in range(C.shape[0]):
        x = ((lb + ub) / 2).clone().requires_grad_(True)
        for k in range(steps):
            value = model(x) @ C[s] - d[s]
            (g,) = torch.autograd.grad(value.sum(), x)
            with torch.no_grad():
                x -= (ub - lb) * 0.1 * (0.97**k) * g.sign()
                x.copy_(torch.minimum(torch.maximum(x, lb), ub))
        with torch.no_grad():
            out.append(model(x) @ C[s] - d[s])
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("eps_w", [0.0, 0.02])
def test_spec_bounds_are_sound_and_ordered(seed: int, kind: str, eps_w: float) -> None:
    model = _mlp(seed) if kind == "mlp" else _cnn(seed)
    shape = (5, 3) if kind == "mlp" else (5, 1, 4, 4)
    lb, ub = _box(shape, seed, scale=[0.5, 30.0][seed % 2])  # boxes far outside [0, 1] too
    k = 4 if kind == "mlp" else 3
    g = torch.Generator().manual_seed(100 + seed)
    C = torch.randn(3, k, generator=g, dtype=torch.float64)
    d = torch.randn(3, generator=g, dtype=torch.float64)
    threat = ThreatModel(eps_w=eps_w, weight_mode="relative", domain=(-1e3, 1e3)) if eps_w else None
    bounds = {
        m: spec_bounds(model, lb, ub, C, d, threat, method=m, alpha_steps=8) for m in ("ibp", "crown", "alpha-crown")
    }
    assert bool((bounds["crown"] >= bounds["ibp"] - 1e-9).all())
    assert bool((bounds["alpha-crown"] >= bounds["crown"] - 1e-9).all())
    # Points: random points and corners of the box, each with random vertices of the weight ball.
    gen = torch.Generator().manual_seed(7 + seed)
    worst = torch.full((shape[0], 3), float("inf"), dtype=torch.float64)
    weights_only = threat or ThreatModel(domain=(-1e3, 1e3))
    for trial in range(12):
        u = torch.rand(shape, generator=gen, dtype=torch.float64)
        x = lb + (ub - lb) * (u.round() if trial % 2 else u)
        with torch.no_grad():
            logits = vertex_logits(model, x, weights_only, 4, seed=trial) if eps_w else model(x)[None]
        values = logits @ C.T - d
        worst = torch.minimum(worst, values.amin(dim=0))
    worst = torch.minimum(worst, _descend(model, lb, ub, C, d).detach())
    assert bool((bounds["alpha-crown"] <= worst + 1e-9).all()), (bounds["alpha-crown"] - worst).min()


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
@pytest.mark.parametrize("eps_w", [0.0, 0.01])
def test_margin_spec_over_the_threat_ball_equals_margin_bounds(method: str, eps_w: float) -> None:
    model = _mlp(3, (6, 16, 16, 5))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 4])
    threat = ThreatModel(eps_x=0.05, eps_w=eps_w)
    lb, ub = threat.input_bounds(x)
    spec = margin_spec(y, 5, torch.float64)  # (N, K, K)
    ours = spec_bounds(
        model, lb, ub, spec, torch.zeros(4, 5, dtype=torch.float64), threat.weight_only(), method, alpha_steps=5
    )
    theirs = margin_bounds(model, x, y, threat, method, alpha_steps=5).lower
    mask = torch.nn.functional.one_hot(y, 5).bool()
    assert torch.allclose(ours.masked_fill(mask, 0.0), theirs, atol=1e-9)


def test_a_single_linear_layer_is_exact() -> None:
    layer = nn.Linear(3, 2).double()
    lb = torch.tensor([[-1.0, 0.0, 2.0]], dtype=torch.float64)
    ub = torch.tensor([[1.0, 0.0, 5.0]], dtype=torch.float64)
    C = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    d = torch.tensor([0.5], dtype=torch.float64)
    a = C @ layer.weight.detach()
    exact = (a.clamp(min=0) * lb + a.clamp(max=0) * ub).sum() + C @ layer.bias.detach() - d
    for method in ("ibp", "crown"):
        assert torch.allclose(spec_bounds(nn.Sequential(layer), lb, ub, C, d, method=method), exact.reshape(1, 1))


def test_bad_arguments_are_refused() -> None:
    model = _mlp(0)
    lb, ub = _box((1, 3), 0, 1.0)
    C, d = torch.ones(1, 4, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    with pytest.raises(ValueError, match="eps_x = 0"):
        spec_bounds(model, lb, ub, C, d, ThreatModel(eps_x=0.1))
    with pytest.raises(ValueError, match="lower <= upper"):
        spec_bounds(model, ub + 1, ub, C, d)
    with pytest.raises(ValueError, match="C must be"):
        spec_bounds(model, lb, ub, torch.ones(1, 3, dtype=torch.float64), d)
    with pytest.raises(ValueError, match="norm"):
        spec_bounds(model, lb, ub, C, d, method="norm")
