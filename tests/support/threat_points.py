"""Points of the threat set the bound tests check bounds against: attacks and random vertices.

Everything here evaluates the ordinary module with explicit perturbed weights (`functional_call`), so a bound
is compared with what the network really computes, not with the bound code's own view of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from nonsingular import PGD, ThreatModel, check_attack
from nonsingular.threat import WeightBall


def margins(logits: Tensor, y: Tensor) -> Tensor:
    """(..., N, K) margins z_y - z_k of logits (..., N, K)."""
    index = y.expand(*logits.shape[:-1])[..., None]
    return logits.gather(-1, index) - logits


def _random_sign(shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(dtype)


def vertex_logits(model: nn.Module, x: Tensor, threat: ThreatModel, n_vertices: int, seed: int = 0) -> Tensor:
    """(V, N, K) logits at random vertices of the per-example threat set.

    Each vertex: every input coordinate at an end of its box; every perturbed weight at +-rho (element-wise
    ball) or each row's whole budget e on one random column with a random sign (operator ball, a vertex of
    the l1 ball of the row); every perturbed bias at +-its radius. Independent draws per example.
    """
    g = torch.Generator().manual_seed(seed)
    lb, ub = threat.input_bounds(x)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    n = len(x)
    out = []
    for _ in range(n_vertices):
        x_v = torch.where(torch.rand(x.shape, generator=g) < 0.5, lb, ub)
        perturbed: dict[str, Tensor] = {}
        for name, _module in threat.weight_layers(model):
            w = params[f"{name}.weight"]
            if threat.weight_ball is WeightBall.ELEMENTWISE:
                delta = _random_sign((n, *w.shape), g, w.dtype) * threat.weight_radius(name, w)
            else:
                rows, cols = w.shape[0], w[0].numel()
                column = torch.randint(0, cols, (n, rows), generator=g)
                delta = F.one_hot(column, cols).to(w.dtype) * _random_sign((n, rows, 1), g, w.dtype)
                delta = (delta * threat.operator_radius(name, w)).reshape(n, *w.shape)
            perturbed[f"{name}.weight"] = w + delta
            beta = threat.bias_radius(params.get(f"{name}.bias"))
            if beta is not None:
                perturbed[f"{name}.bias"] = params[f"{name}.bias"] + _random_sign((n, *beta.shape), g, w.dtype) * beta
        with torch.no_grad():
            if not perturbed:
                out.append(model(x_v))
                continue
            fixed = {k: v for k, v in params.items() if k not in perturbed}

            def one(p: dict[str, Tensor], xi: Tensor, fixed: dict[str, Tensor] = fixed) -> Tensor:
                return functional_call(model, ({**fixed, **p}, buffers), (xi[None],))[0]

            out.append(vmap(one)(perturbed, x_v))
    return torch.stack(out)


def attacked_logits(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, loss: str, steps: int) -> Tensor:
    """(N, K) logits at the point a checked per-example PGD found (recomputed with explicit weights)."""
    result = PGD(steps=steps, restarts=2, loss=loss, seed=1)(model, x, y, threat)
    check = check_attack(model, x, y, result)
    assert check.passed, check.problems
    return check.logits


def tolerance(*tensors: Tensor) -> float:
    """Rounding allowance for float64 comparisons: 1e-9 relative to the largest magnitude involved."""
    return 1e-9 * (1.0 + max(float(t.detach().abs().max()) for t in tensors))
