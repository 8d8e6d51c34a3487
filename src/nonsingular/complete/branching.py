"""Which ReLU to split (or which input to bisect), read from the bound's own backward coefficients.

Heuristics (all score unstable, unsplit neurons; the highest score is split):
- `babsr` (default): the intercept term alone (a < 0 rows), the part of BaBSR that needs no extra pass. On
  10-24x3-3 MLPs it proves the same properties with 50-700 times fewer domains than `gap` (BENCHMARKS.md).
- `gap`: |a| times the largest gap between the neuron's relaxation and ReLU itself on [lb, ub], summed
  over the rows that decide the domain. For a < 0 the upper chord costs at most -lb ub / (ub - lb) (at z = 0: the
  intercept term of BaBSR, Bunel et al. 2020); for a > 0 the lower line alpha z costs at most
  max((1 - alpha) ub, -alpha lb). Splitting removes that gap in both children, so the score is how much of the
  bound the neuron can hold back.
- `widest`: ub - lb, ignoring the coefficients (the naive baseline the measurements compare against).
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

__all__ = ["Branching", "input_split_choice", "relu_split_choice"]


class Branching(str, Enum):
    """ReLU branching heuristic (see the module docstring)."""

    GAP = "gap"
    BABSR = "babsr"
    WIDEST = "widest"


def relu_split_choice(
    heuristic: Branching,
    lbs: list[Tensor],
    ubs: list[Tensor],
    signs: list[Tensor],
    coefs: list[Tensor],
    alphas: list[Tensor],
    row_weight: Tensor,
) -> tuple[Tensor, Tensor]:
    """Per domain, the (layer, neuron) to split; layer -1 where no unstable unsplit neuron is left (a leaf).

    lbs, ubs, signs: per ReLU layer (B, n); coefs, alphas: (B, R, n); row_weight: (B, R) >= 0, the rows that
    decide each domain.
    """
    scores = []
    for lb, ub, sign, coef, alpha in zip(lbs, ubs, signs, coefs, alphas, strict=True):
        unstable = (lb < 0) & (ub > 0) & (sign == 0)
        width = torch.where(unstable, ub - lb, torch.ones_like(lb))
        if heuristic is Branching.WIDEST:
            score = ub - lb
        else:
            chord_gap = (-lb * ub / width).clamp(min=0)[:, None, :]
            neg = (-coef).clamp(min=0) * chord_gap
            if heuristic is Branching.GAP:
                line_gap = torch.maximum((1 - alpha) * ub[:, None, :], -alpha * lb[:, None, :]).clamp(min=0)
                neg = neg + coef.clamp(min=0) * line_gap
            score = (neg * row_weight[:, :, None]).sum(dim=1)
            # A neuron the deciding rows do not see still beats no split at all (ties broken by width).
            score = score + 1e-9 * (ub - lb)
        scores.append(torch.where(unstable, score, torch.full_like(score, -1.0)))
    if not scores:  # no ReLU layer at all: every domain is a leaf
        none = torch.full((row_weight.shape[0],), -1, dtype=torch.int64)
        return none, torch.zeros_like(none)
    flat = torch.cat(scores, dim=1)
    best, index = flat.max(dim=1)
    offsets = torch.tensor([0, *[s.shape[1] for s in scores]]).cumsum(0)
    layer = torch.searchsorted(offsets[1:], index, right=True)
    neuron = index - offsets[layer]
    layer = torch.where(best < 0, torch.full_like(layer, -1), layer)
    return layer, neuron


def input_split_choice(lo: Tensor, hi: Tensor, a0: Tensor, row_weight: Tensor) -> Tensor:
    """Per box (B, n_0), the input dimension to bisect: the largest (sum over deciding rows of |a0|) x width,
    i.e. the dimension whose range moves the linear bound most; plain width breaks ties (and decides alone
    where every coefficient is 0)."""
    width = hi - lo
    influence = (a0.abs() * row_weight[:, :, None]).sum(dim=1)
    return (influence * width + 1e-12 * width).argmax(dim=1)
