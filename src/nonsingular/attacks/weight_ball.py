"""The geometry of the operator weight ball that the attack's variables live in.

The operator ball bounds each row's l1 norm of D = W' - W (THEORY.md section 2): the attack projects rows onto
that l1 ball after every step, and the explicit weights it hands the checker are settled back inside where
rounding alone put them out (section 8). Element-wise boxes need neither: a clamp is their projection.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["project_rows_l1", "settle_operator_rounding"]


def project_rows_l1(delta: Tensor, radius: Tensor) -> Tensor:
    """Euclidean projection of each row of `delta` (rows = dim -2 after flattening) onto the l1 ball.

    delta: (..., rows, cols); radius: broadcastable scalar. Duchi et al. 2008, vectorised over rows.
    """
    a = delta.abs()
    inside = a.sum(dim=-1, keepdim=True) <= radius
    mu, _ = torch.sort(a, dim=-1, descending=True)
    cumsum = mu.cumsum(dim=-1)
    k = torch.arange(1, a.shape[-1] + 1, device=a.device, dtype=a.dtype)
    cond = mu - (cumsum - radius) / k > 0
    rho_idx = cond.to(a.dtype).cumsum(dim=-1).argmax(dim=-1, keepdim=True)
    theta = (cumsum.gather(-1, rho_idx) - radius) / (rho_idx + 1).to(a.dtype)
    projected = torch.sign(delta) * torch.clamp(a - theta.clamp_min(0), min=0)
    return torch.where(inside, delta, projected)


def settle_operator_rounding(weight: Tensor, perturbed: Tensor, radius: Tensor) -> Tensor:
    """Operator ball: bring rows of W' = perturbed back inside the ball where only rounding put them out.

    THEORY.md section 8: the row sums sum_j |W'_ij - W_ij| that the checker computes in the dtype can exceed
    e by the rounding of W + D (up to an ulp of each |W'_ij|) and of the l1 projection (an ulp of e per column),
    even when the attack's D lies in the ball. Such rows are shrunk towards W. A row further out than that
    rounding slack is returned as it is: a perturbation that really leaves the ball must reach the checker.

    Args:
        weight: W, (rows, ...) with rows = output features / channels.
        perturbed: W', W.shape or (n, *W.shape).
        radius: e, 0-dim tensor in W's dtype.
    """
    rows = weight.shape[0]
    lead = perturbed.dim() - weight.dim()
    tiny = torch.finfo(weight.dtype).eps
    cols = weight[0].numel()

    def row_view(t: Tensor) -> Tensor:
        return t.reshape(*t.shape[:lead], rows, -1)

    def expand(v: Tensor) -> Tensor:
        return v.reshape(*v.shape, *([1] * (weight.dim() - 1)))

    sums = row_view(perturbed - weight).abs().sum(dim=-1)
    rounding = 4 * tiny * (row_view(perturbed).abs().sum(dim=-1) + cols * radius)
    settle = (sums > radius) & (sums <= radius + rounding)
    if not bool(settle.any()):
        return perturbed
    settled = perturbed
    for _ in range(4):
        diff = settled - weight
        sums = row_view(diff).abs().sum(dim=-1)
        over = settle & (sums > radius)
        if not bool(over.any()):
            return settled
        # Aim below the radius by a bound on the rounding of W + D (an ulp of each |W'| element), so the
        # difference the dtype computes afterwards lands inside even when |W| >> radius.
        slack = 2 * tiny * row_view(settled).abs().sum(dim=-1)
        scale = torch.where(over, (radius - slack).clamp_min(0) / sums, torch.ones_like(sums))
        settled = weight + diff * expand(scale)
    # Still outside after the rounds above (pathological magnitudes): those rows stay unperturbed.
    over = settle & (row_view(settled - weight).abs().sum(dim=-1) > radius)
    return torch.where(expand(over), weight.expand_as(settled), settled)
