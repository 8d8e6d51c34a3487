"""Batched linear bounds on a Chain over many domains at once: CROWN, alpha-CROWN and beta-CROWN.

A domain is an input box [lo0, hi0] (in the chain's h_0 coordinates), pre-activation bounds [lb_l, ub_l] of every
ReLU layer valid on it, and split signs s_l in {-1, 0, +1} (s = +1: z >= 0 on the domain, -1: z <= 0). All of it
lives in tensors with the domain on the leading dimension B; spec rows on the second (R).

The backward pass carries a coefficient a (B, R, n) on a layer's output down to the input (THEORY.md section 5):
- Linear with the joint threat (Lemma 1 per row): a.(W'h + b') >= aW h + a b - (|a| rho).|h| - |a| beta, where
  |h| = h after a ReLU (h >= 0) and |h| <= its chord over the input box at the first layer; operator ball:
  -(sum |a|) e max|h|;
- ReLU: exact where stable (a split sets lb = 0 or ub = 0, which makes it so), else the triangle relaxation with the
  lower slope alpha in [0, 1] (optimised per domain, row and neuron);
- split constraints (beta-CROWN, THEORY.md section 12): -beta s z added at the split layer's pre-activations for
  any beta >= 0, so every iterate of the optimisation is a sound bound and the best one per row is kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .chain import Chain, ChainLayer

__all__ = [
    "BoundResult",
    "DomainBoxes",
    "backward_bound",
    "crown_intermediate",
    "optimise_bounds",
    "refine_intermediate",
]


@dataclass
class DomainBoxes:
    """What bounding needs per domain, batched: (B, n_0) input box and (B, n_l) pre-activation bounds."""

    lo0: Tensor
    hi0: Tensor
    lbs: list[Tensor]
    ubs: list[Tensor]


@dataclass
class BoundResult:
    """Result of `optimise_bounds` for B domains and R spec rows.

    Attributes:
        lower: (B, R) sound lower bounds of C_i f(x) - d_i over each domain.
        alphas, betas: per ReLU layer (B, R, n_l), the multipliers that gave the best total per domain.
        coefs: per ReLU layer (B, R, n_l), the backward coefficient on h_l (post-activation) at the last step.
        a0: (B, R, n_0) the coefficient on h_0 (its sign gives the relaxation's minimiser).
        timed_out: the deadline stopped the optimisation early (lower is still sound).
    """

    lower: Tensor
    alphas: list[Tensor]
    betas: list[Tensor]
    coefs: list[Tensor]
    a0: Tensor
    timed_out: bool


def _group_max(lower: Tensor, groups: Tensor) -> Tensor:
    """(B, G): per disjunct, its best row's lower bound (NaN counts as -inf)."""
    lower = torch.nan_to_num(lower, nan=-torch.inf)
    fill = torch.full_like(lower[:, None, :], -torch.inf)
    return torch.where(groups[None], lower[:, None, :], fill).amax(dim=-1)


def _abs_chord(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """(slope, offset) with |h| <= slope h + offset on [lo, hi], equal at both ends."""
    unstable = (lo < 0) & (hi > 0)
    width = torch.where(unstable, hi - lo, torch.ones_like(lo))
    slope = torch.where(unstable, (hi + lo) / width, torch.where(lo >= 0, 1.0, -1.0).to(lo))
    offset = torch.where(unstable, -2 * hi * lo / width, torch.zeros_like(lo))
    return slope, offset


def _linear_back(
    layer: ChainLayer, a: Tensor, const: Tensor, h_lo: Tensor, h_hi: Tensor, nonneg: bool
) -> tuple[Tensor, Tensor]:
    """Carry a (B, R, out) on z = W'h + b' to the coefficient on h (B, R, in), adding constants to const (B, R)."""
    new_a = a @ layer.weight
    const = const + a @ layer.bias
    lt = layer.threat
    if lt is None:
        return new_a, const
    abs_a = a.abs()
    if lt.beta is not None:
        const = const - abs_a @ lt.beta
    if lt.rho is not None:
        r = abs_a.sum(dim=-1, keepdim=True) * lt.uniform if lt.uniform is not None else abs_a @ lt.rho
        if nonneg:
            new_a = new_a - r
        else:
            slope, offset = _abs_chord(h_lo, h_hi)
            new_a = new_a - r * slope[:, None, :]
            const = const - (r * offset[:, None, :]).sum(dim=-1)
    else:
        h_max = torch.maximum(h_lo.abs(), h_hi.abs()).amax(dim=-1)  # (B,)
        const = const - abs_a.sum(dim=-1) * lt.operator_radius() * h_max[:, None]
    return new_a, const


def _relu_back(
    a: Tensor,
    const: Tensor,
    lb: Tensor,
    ub: Tensor,
    alpha: Tensor | None,
    beta: Tensor | None,
    sign: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Carry a (B, R, n) on h = ReLU(z) to z, for a lower bound; lb, ub, sign (B, n); alpha, beta (B, R, n)."""
    active = (lb >= 0).to(a.dtype)[:, None, :]
    unstable_b = (lb < 0) & (ub > 0)
    unstable = unstable_b.to(a.dtype)[:, None, :]
    width = torch.where(unstable_b, ub - lb, torch.ones_like(lb))
    su = torch.where(unstable_b, ub / width, torch.zeros_like(lb))[:, None, :]
    intercept = (-su * lb[:, None, :]) * unstable
    if alpha is None:
        alpha = (ub > -lb).to(a.dtype)[:, None, :]
    pos, neg = a.clamp(min=0), a.clamp(max=0)
    a_z = active * a + unstable * (pos * alpha + neg * su)
    const = const + (neg * intercept).sum(dim=-1)
    if beta is not None and sign is not None:
        a_z = a_z - beta * sign.to(a.dtype)[:, None, :]
    return a_z, const


def backward_bound(
    chain: Chain,
    a: Tensor,
    const: Tensor,
    top: int,
    boxes: DomainBoxes,
    alphas: list[Tensor] | None = None,
    betas: list[Tensor] | None = None,
    signs: list[Tensor] | None = None,
    coefs: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Lower bound of a . z_{top+1} + const over each domain (z_{top+1}: the output of chain.layers[top]).

    a: (B, R, n) on that output; const: (B, R). alphas/betas/signs index ReLU layers 0..top-1 (longer lists are
    fine). coefs, if given, is filled with the coefficient on each h_l (l = 1..top), innermost last.

    Returns:
        (lower (B, R), the coefficient on h_0 (B, R, n_0)).
    """
    for i in range(top, -1, -1):
        layer = chain.layers[i]
        if i > 0:
            h_lo, h_hi = boxes.lbs[i - 1].clamp(min=0), boxes.ubs[i - 1].clamp(min=0)
        else:
            h_lo, h_hi = boxes.lo0, boxes.hi0
        a, const = _linear_back(layer, a, const, h_lo, h_hi, nonneg=i > 0)
        if i == 0:
            break
        if coefs is not None:
            coefs.insert(0, a)
        a, const = _relu_back(
            a,
            const,
            boxes.lbs[i - 1],
            boxes.ubs[i - 1],
            None if alphas is None else alphas[i - 1],
            None if betas is None else betas[i - 1],
            None if signs is None else signs[i - 1],
        )
    lower = const + (a.clamp(min=0) * boxes.lo0[:, None, :] + a.clamp(max=0) * boxes.hi0[:, None, :]).sum(dim=-1)
    return lower, a


def _ibp_layer(layer: ChainLayer, lo: Tensor, hi: Tensor, nonneg: bool) -> tuple[Tensor, Tensor]:
    """Interval bounds of W'h + b' for h in [lo, hi] (B, in), with the layer's weight and bias radii."""
    w, lt = layer.weight, layer.threat
    if lt is not None and lt.rho is not None and nonneg:
        w_lo, w_hi = w - lt.rho, w + lt.rho
        z_lo = lo @ w_lo.clamp(min=0).T + hi @ w_lo.clamp(max=0).T
        z_hi = hi @ w_hi.clamp(min=0).T + lo @ w_hi.clamp(max=0).T
    else:
        z_lo = lo @ w.clamp(min=0).T + hi @ w.clamp(max=0).T
        z_hi = hi @ w.clamp(min=0).T + lo @ w.clamp(max=0).T
        if lt is not None:
            m = torch.maximum(lo.abs(), hi.abs())
            term = m @ lt.rho.T if lt.rho is not None else lt.operator_radius() * m.amax(dim=-1, keepdim=True)
            z_lo, z_hi = z_lo - term, z_hi + term
    z_lo, z_hi = z_lo + layer.bias, z_hi + layer.bias
    if lt is not None and lt.beta is not None:
        z_lo, z_hi = z_lo - lt.beta, z_hi + lt.beta
    return z_lo, z_hi


def crown_intermediate(chain: Chain, lo0: Tensor, hi0: Tensor) -> DomainBoxes:
    """Pre-activation bounds of every ReLU layer over each box (B, n_0): CROWN (adaptive lower slopes) intersected
    with IBP, layer by layer, each layer's bounds using the ones below it."""
    boxes = DomainBoxes(lo0, hi0, [], [])
    h_lo, h_hi = lo0, hi0
    batch = lo0.shape[0]
    for j in range(len(chain.layers) - 1):
        n = chain.layers[j].weight.shape[0]
        ibp_lo, ibp_hi = _ibp_layer(chain.layers[j], h_lo, h_hi, nonneg=j > 0)
        if j == 0 and chain.layers[0].threat is None:
            lb, ub = ibp_lo, ibp_hi  # one affine map of a box: IBP is exact
        else:
            eye = torch.eye(n, dtype=lo0.dtype)
            a = torch.cat([eye, -eye], dim=0).expand(batch, 2 * n, n)
            lower, _ = backward_bound(chain, a, torch.zeros(batch, 2 * n, dtype=lo0.dtype), j, boxes)
            lb, ub = torch.maximum(lower[:, :n], ibp_lo), torch.minimum(-lower[:, n:], ibp_hi)
        boxes.lbs.append(lb)
        boxes.ubs.append(ub)
        h_lo, h_hi = lb.clamp(min=0), ub.clamp(min=0)
    return boxes


def refine_intermediate(chain: Chain, boxes: DomainBoxes, first: int = 1) -> DomainBoxes:
    """Tighten the pre-activation bounds of ReLU layers first.. (0-based) over each domain, in place.

    After a split the split neuron's relaxation is exact on the child, so CROWN bounds of the layers above it
    (adaptive slopes, no multipliers) can beat the inherited ones; both are sound on the child, so the
    intersection is kept. Split neurons stay split: their clamped bound is part of the inherited one.
    """
    batch = boxes.lo0.shape[0]
    for j in range(max(first, 1), len(chain.layers) - 1):
        n = chain.layers[j].weight.shape[0]
        eye = torch.eye(n, dtype=boxes.lo0.dtype)
        a = torch.cat([eye, -eye], dim=0).expand(batch, 2 * n, n)
        lower, _ = backward_bound(chain, a, torch.zeros(batch, 2 * n, dtype=a.dtype), j, boxes)
        boxes.lbs[j] = torch.maximum(boxes.lbs[j], lower[:, :n])
        boxes.ubs[j] = torch.minimum(boxes.ubs[j], -lower[:, n:])
    return boxes


def optimise_bounds(
    chain: Chain,
    spec: Tensor,
    offset: Tensor,
    boxes: DomainBoxes,
    alphas: list[Tensor],
    betas: list[Tensor],
    signs: list[Tensor],
    *,
    steps: int,
    lr_alpha: float = 0.1,
    lr_beta: float = 0.05,
    deadline: float = float("inf"),
    groups: Tensor | None = None,
) -> BoundResult:
    """alpha/beta-CROWN lower bounds of spec f(x) - offset over B domains, by projected Adam on the multipliers.

    spec: (R, K); offset: (R,). alphas/betas: per ReLU layer (B, R, n_l), the start point (inherited from the
    parent); signs: per ReLU layer (B, n_l). groups: (G, R) bool, the rows of each disjunct (default: one
    conjunction of every row); a domain is settled once each disjunct has a positive row, and the optimisation
    stops when all are. Every iterate is sound; the best per row is returned, and per domain the multipliers of
    the best total.
    """
    batch = boxes.lo0.shape[0]
    if groups is None:
        groups = torch.ones(1, spec.shape[0], dtype=torch.bool)
    a_top = spec.to(torch.float64).expand(batch, *spec.shape)
    c_top = (-offset.to(torch.float64)).expand(batch, spec.shape[0]).clone()
    al = [x.detach().clone().requires_grad_(True) for x in alphas]
    be = [x.detach().clone().requires_grad_(True) for x in betas]
    params = al + be
    optim = torch.optim.Adam([{"params": al, "lr": lr_alpha}, {"params": be, "lr": lr_beta}]) if params else None
    best = torch.full((batch, spec.shape[0]), -torch.inf, dtype=torch.float64)
    best_total = torch.full((batch,), -torch.inf, dtype=torch.float64)
    best_al = [x.detach().clone() for x in al]
    best_be = [x.detach().clone() for x in be]
    coefs: list[Tensor] = []
    a0 = torch.zeros(0)
    timed_out = False
    top = len(chain.layers) - 1
    for step in range(max(steps, 0) + 1):
        coefs = []
        lower, a0 = backward_bound(chain, a_top, c_top, top, boxes, al, be, signs, coefs)
        with torch.no_grad():
            best = torch.maximum(best, lower.detach())
            total = _group_max(lower.detach(), groups).clamp(max=0).sum(dim=-1)  # proven disjuncts stop mattering
            better = total > best_total
            best_total = torch.where(better, total, best_total)
            for kept, cur in zip(best_al + best_be, al + be, strict=True):
                kept[better] = cur.detach()[better]
        if step == steps or optim is None:
            break
        if bool((_group_max(best, groups) > 0).all()):
            break
        if time.monotonic() > deadline:
            timed_out = True
            break
        optim.zero_grad(set_to_none=True)
        (-lower.clamp(max=0).sum()).backward()
        optim.step()
        with torch.no_grad():
            for x in al:
                x.clamp_(0.0, 1.0)
            for x in be:
                x.clamp_(min=0.0)
    return BoundResult(
        lower=best,
        alphas=best_al,
        betas=best_be,
        coefs=[c.detach() for c in coefs],
        a0=a0.detach(),
        timed_out=timed_out,
    )
