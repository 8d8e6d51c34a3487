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
    "alpha_intermediate",
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


def refine_intermediate(
    chain: Chain, boxes: DomainBoxes, first: int = 1, deadline: float = float("inf"), max_neurons: int = 32
) -> DomainBoxes:
    """Tighten the pre-activation bounds of ReLU layers first.. (0-based) over each domain, in place.

    After a split the split neuron's relaxation is exact on the child, so CROWN bounds of the layers above it
    (adaptive slopes, no multipliers) can beat the inherited ones; both are sound on the child, so the
    intersection is kept. Only neurons unstable on some domain of the batch are recomputed (a stable neuron's
    relaxation is already exact), at most max_neurons per layer (the widest summed over the batch): each costs
    two backward passes to the input per domain, which on a 784-input MLP outweighs the final bound itself.
    Stops early, with the bounds so far (all sound), at the deadline.
    """
    batch = boxes.lo0.shape[0]
    for j in range(max(first, 1), len(chain.layers) - 1):
        if time.monotonic() > deadline:
            break
        lb, ub = boxes.lbs[j], boxes.ubs[j]
        unstable = (lb < 0) & (ub > 0)
        idx = unstable.any(dim=0).nonzero().flatten()
        if idx.numel() == 0 or max_neurons <= 0:
            continue
        if idx.numel() > max_neurons:
            width = torch.where(unstable, ub - lb, torch.zeros_like(lb)).sum(dim=0)
            idx = torch.topk(width, max_neurons).indices.sort().values
        n, k = lb.shape[1], idx.numel()
        rows = torch.zeros(2 * k, n, dtype=boxes.lo0.dtype)
        rows[torch.arange(k), idx] = 1.0
        rows[torch.arange(k, 2 * k), idx] = -1.0
        a = rows.expand(batch, 2 * k, n)
        lower, _ = backward_bound(chain, a, torch.zeros(batch, 2 * k, dtype=a.dtype), j, boxes)
        lb, ub = lb.clone(), ub.clone()
        lb[:, idx] = torch.maximum(lb[:, idx], lower[:, :k])
        ub[:, idx] = torch.minimum(ub[:, idx], -lower[:, k:])
        boxes.lbs[j], boxes.ubs[j] = lb, ub
    return boxes


def alpha_intermediate(
    chain: Chain,
    boxes: DomainBoxes,
    *,
    steps: int,
    lr_alpha: float = 0.1,
    deadline: float = float("inf"),
    work_chain: Chain | None = None,
) -> DomainBoxes:
    """Tighten every ReLU layer's unstable pre-activation bounds (layers 1.. upward, 0-based) by alpha-CROWN: the
    slopes of the layers below optimised for each bound separately (rows z_k and -z_k). For the root, where the
    cost is paid once. Each result is a float64 pass with slopes in [0, 1], intersected with the old bounds."""
    for j in range(1, len(chain.layers) - 1):
        if time.monotonic() > deadline:
            break
        lb, ub = boxes.lbs[j], boxes.ubs[j]
        unstable = (lb < 0) & (ub > 0)
        idx = unstable.any(dim=0).nonzero().flatten()
        if idx.numel() == 0:
            continue
        n, k, batch = lb.shape[1], idx.numel(), lb.shape[0]
        rows = torch.zeros(2 * k, n, dtype=torch.float64)
        rows[torch.arange(k), idx] = 1.0
        rows[torch.arange(k, 2 * k), idx] = -1.0
        alphas = [
            (boxes.ubs[i] > -boxes.lbs[i]).to(torch.float64)[:, None, :].expand(batch, 2 * k, -1).clone()
            for i in range(j)
        ]
        signs = [torch.zeros_like(boxes.lbs[i], dtype=torch.int8) for i in range(j)]
        res = optimise_bounds(
            chain,
            rows,
            torch.zeros(2 * k, dtype=torch.float64),
            boxes,
            alphas,
            [torch.zeros_like(a) for a in alphas],
            signs,
            steps=steps,
            lr_alpha=lr_alpha,
            lr_beta=0.0,
            deadline=deadline,
            groups=torch.eye(2 * k, dtype=torch.bool),
            work_chain=work_chain,
            top=j,
        )
        if res.timed_out:
            break
        lb, ub = lb.clone(), ub.clone()
        lb[:, idx] = torch.maximum(lb[:, idx], res.lower[:, :k])
        ub[:, idx] = torch.minimum(ub[:, idx], -res.lower[:, k:])
        boxes.lbs[j], boxes.ubs[j] = lb, ub
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
    work_chain: Chain | None = None,
    top: int | None = None,
) -> BoundResult:
    """alpha/beta-CROWN lower bounds of spec f(x) - offset over B domains, by projected Adam on the multipliers.

    spec: (R, K); offset: (R,). alphas/betas: per ReLU layer (B, R, n_l), the start point (inherited from the
    parent); signs: per ReLU layer (B, n_l). groups: (G, R) bool, the rows of each disjunct (default: one
    conjunction of every row); the optimisation stops once every domain has a positive row in each disjunct.
    work_chain: a copy of the chain in a cheaper dtype (float32) for the gradient steps; None: float64 throughout.
    top: bound rows over the output of chain.layers[top] (spec: (R, its width)); default the last layer. The
    multiplier lists then cover the ReLU layers below it.

    Only the multipliers come from the optimisation: the returned bound is one float64 backward pass with the
    best multipliers found (alpha in [0, 1], beta >= 0, so sound whatever the steps did); rounding in the
    cheaper dtype can only make those multipliers less good, never the bound wrong.
    """
    batch = boxes.lo0.shape[0]
    if groups is None:
        groups = torch.ones(1, spec.shape[0], dtype=torch.bool)
    work = work_chain if work_chain is not None else chain
    wd = work.layers[0].weight.dtype
    w_boxes = DomainBoxes(
        boxes.lo0.to(wd), boxes.hi0.to(wd), [x.to(wd) for x in boxes.lbs], [x.to(wd) for x in boxes.ubs]
    )
    a_top = spec.to(wd).expand(batch, *spec.shape)
    c_top = (-offset.to(wd)).expand(batch, spec.shape[0]).clone()
    al = [x.detach().to(wd).clone().requires_grad_(True) for x in alphas]
    be = [x.detach().to(wd).clone().requires_grad_(True) for x in betas]
    best_total = torch.full((batch,), -torch.inf, dtype=wd)
    best_al = [x.detach().clone() for x in al]
    best_be = [x.detach().clone() for x in be]
    timed_out = time.monotonic() > deadline
    top = len(chain.layers) - 1 if top is None else top
    if steps > 0 and al and not timed_out:
        # Adam by hand: torch.optim's first step imports the compiler stack (seconds), which a 1 s budget
        # cannot afford; the update is the textbook one, element-wise, so domains stay independent.
        params = al + be
        lrs = [lr_alpha] * len(al) + [lr_beta] * len(be)
        m1 = [torch.zeros_like(p) for p in params]
        m2 = [torch.zeros_like(p) for p in params]
        for step in range(steps + 1):
            lower, _ = backward_bound(work, a_top, c_top, top, w_boxes, al, be, signs)
            with torch.no_grad():
                group_best = _group_max(lower.detach(), groups)
                total = group_best.clamp(max=0).sum(dim=-1)  # proven disjuncts stop mattering
                better = total > best_total
                best_total = torch.where(better, total, best_total)
                for kept, cur in zip(best_al + best_be, params, strict=True):
                    kept[better] = cur.detach()[better]
            if step == steps or bool((best_total >= 0).all()):
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            grads = torch.autograd.grad(-lower.clamp(max=0).sum(), params)
            with torch.no_grad():
                k = step + 1
                for p, g, a, v, lr in zip(params, grads, m1, m2, lrs, strict=True):
                    a.mul_(0.9).add_(g, alpha=0.1)
                    v.mul_(0.999).addcmul_(g, g, value=0.001)
                    p.sub_(lr * (a / (1 - 0.9**k)) / ((v / (1 - 0.999**k)).sqrt() + 1e-8))
                for x in al:
                    x.clamp_(0.0, 1.0)
                for x in be:
                    x.clamp_(min=0.0)
    if timed_out or time.monotonic() > deadline:
        # The caller discards a timed-out batch: skip the float64 pass and say so.
        nothing = torch.full((batch, spec.shape[0]), -torch.inf, dtype=torch.float64)
        return BoundResult(nothing, alphas, betas, [], boxes.lo0.new_zeros(batch, spec.shape[0], 0), True)
    final_al = [x.to(torch.float64).clamp(0.0, 1.0) for x in best_al]
    final_be = [x.to(torch.float64).clamp(min=0.0) for x in best_be]
    coefs: list[Tensor] = []
    with torch.no_grad():
        lower, a0 = backward_bound(
            chain,
            spec.to(torch.float64).expand(batch, *spec.shape),
            (-offset.to(torch.float64)).expand(batch, spec.shape[0]).clone(),
            top,
            boxes,
            final_al,
            final_be,
            signs,
            coefs,
        )
    return BoundResult(lower=lower, alphas=final_al, betas=final_be, coefs=coefs, a0=a0, timed_out=timed_out)
