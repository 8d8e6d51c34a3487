"""Bounds of split domains hold for every point of the split region, for any slopes and multipliers.

Points are drawn in the box (and, under a weight threat, weights in the ball, run through F.linear with the
explicit perturbed weights, not through the bound code); those whose pre-activations obey every split are the
domain. Its pre-activation bounds (inherited, then refined) and its beta-CROWN bound, at random alpha in [0, 1]
and random beta >= 0 as well as at optimised ones, must hold at each such point.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nonsingular import ThreatModel
from nonsingular.complete import chain_from_model
from nonsingular.complete.bounding import backward_bound, crown_intermediate, optimise_bounds, refine_intermediate

THREATS = {
    "input-only": None,
    "elementwise-absolute": ThreatModel(eps_w=0.02),
    "elementwise-relative-bias": ThreatModel(eps_w=0.05, weight_mode="relative", eps_b=0.01),
    "operator-relative": ThreatModel(eps_w=0.03, weight_ball="operator", weight_mode="relative"),
}


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3)
    ).eval()


def _sample(model: nn.Sequential, threat: ThreatModel | None, lo: Tensor, hi: Tensor, n: int, seed: int):
    """(pre-activations per ReLU layer (n, width), outputs (n, K)) at random points and random weights."""
    g = torch.Generator().manual_seed(seed)
    h = lo + torch.rand(n, lo.numel(), generator=g, dtype=torch.float64) * (hi - lo)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    names = {id(m): name for name, m in model.named_modules()}
    chosen = {name for name, _ in threat.weight_layers(model)} if threat is not None else set()
    pre = []
    for i, lin in enumerate(linears):
        w, b = lin.weight.double(), lin.bias.double()
        if names[id(lin)] in chosen and threat is not None:
            name = names[id(lin)]
            if threat.weight_ball.value == "elementwise":
                rho = threat.weight_radius(name, w)
                d = (torch.rand(n, *w.shape, generator=g, dtype=torch.float64) * 2 - 1).sign() * rho
            else:
                e = threat.operator_radius(name, w)
                d = torch.zeros(n, *w.shape, dtype=torch.float64)
                col = torch.randint(0, w.shape[1], (n, w.shape[0]), generator=g)
                sgn = torch.randint(0, 2, (n, w.shape[0]), generator=g).double() * 2 - 1
                d.scatter_(2, col[..., None], (sgn * e)[..., None])
            beta = threat.bias_radius(b)
            db = 0 if beta is None else (torch.rand(n, *b.shape, generator=g, dtype=torch.float64) * 2 - 1) * beta
            z = torch.einsum("noi,ni->no", w + d, h) + b + db
        else:
            z = F.linear(h, w, b)
        if i < len(linears) - 1:
            pre.append(z)
            h = torch.relu(z)
    return pre, z


@pytest.mark.parametrize("threat_name", list(THREATS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_domain_bounds_hold_on_the_split_region(threat_name: str, seed: int) -> None:
    threat = THREATS[threat_name]
    model = _net(seed)
    chain = chain_from_model(model, (4,), threat)
    g = torch.Generator().manual_seed(seed)
    lo = (torch.rand(4, generator=g, dtype=torch.float64) - 0.5)[None]
    hi = lo + 0.6
    boxes = crown_intermediate(chain, lo, hi)
    pre, out = _sample(model, threat, lo, hi, 15000, seed)
    for j, z in enumerate(pre):  # the root boxes hold everywhere
        assert bool((z >= boxes.lbs[j] - 1e-9).all()) and bool((z <= boxes.ubs[j] + 1e-9).all())
    # Split the neurons (of the first two layers) that the sampled points cut most evenly.
    signs = [torch.zeros_like(lb, dtype=torch.int8) for lb in boxes.lbs]
    keep = torch.ones(out.shape[0], dtype=torch.bool)
    for j in (0, 1):
        frac = (pre[j][keep] > 0).double().mean(dim=0)
        for k in torch.argsort((frac - 0.5).abs())[:2].tolist():
            # a random side where both sides hold samples, else the side that holds them
            coin = float(torch.rand(1, generator=g)) if 0.1 < frac[k] < 0.9 else 1 - float(frac[k])
            s = 1 if coin < 0.5 else -1
            signs[j][0, k] = s
            if s > 0:
                boxes.lbs[j][0, k] = boxes.lbs[j][0, k].clamp(min=0)
            else:
                boxes.ubs[j][0, k] = boxes.ubs[j][0, k].clamp(max=0)
            keep &= (s * pre[j][:, k]) >= 0
    assert int(keep.sum()) >= 50, "the split region should hold some of the samples"
    refine_intermediate(chain, boxes, first=1)
    for j, z in enumerate(pre):  # refined bounds hold on the split region
        assert bool((z[keep] >= boxes.lbs[j] - 1e-9).all()) and bool((z[keep] <= boxes.ubs[j] + 1e-9).all())
    spec = torch.randn(3, 3, generator=g, dtype=torch.float64)
    offset = torch.zeros(3, dtype=torch.float64)
    truth = (out[keep] @ spec.T).amin(dim=0)
    for trial in range(4):
        alphas = [torch.rand(1, 3, lb.shape[1], generator=g, dtype=torch.float64) for lb in boxes.lbs]
        betas = [torch.rand(1, 3, lb.shape[1], generator=g, dtype=torch.float64) * 10**trial for lb in boxes.lbs]
        lower, _ = backward_bound(chain, spec[None], -offset[None], len(chain.layers) - 1, boxes, alphas, betas, signs)
        assert bool((lower[0] <= truth + 1e-9).all()), (trial, lower, truth)
    alphas = [
        (ub > -lb).double()[:, None, :].expand(1, 3, -1).clone() for lb, ub in zip(boxes.lbs, boxes.ubs, strict=True)
    ]
    betas = [torch.zeros_like(a) for a in alphas]
    res = optimise_bounds(
        chain, spec, offset, boxes, alphas, betas, signs, steps=30, work_chain=chain.cast(torch.float32)
    )
    assert bool((res.lower[0] <= truth + 1e-9).all())
    assert bool((res.alphas[0] >= 0).all()) and bool((res.betas[0] >= 0).all())
