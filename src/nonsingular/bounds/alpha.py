"""alpha-CROWN: CROWN with the lower ReLU slopes optimised per example and per margin by projected gradient ascent.

Any lower slope in [0, 1] gives a sound relaxation of an unstable ReLU, so every iterate's bound is sound; the
result is the element-wise best over CROWN and all iterates, hence never looser than CROWN. Intermediate boxes
stay CROWN's (only the final margins' slopes are optimised), and the result is not differentiable in the weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .engine import Backward, GraphBounds

__all__ = ["optimise_margins"]

#: Adam step size on the slopes (they live in [0, 1]).
_LR = 0.1


def optimise_margins(bounds: GraphBounds, spec: Tensor, steps: int) -> Tensor:
    """(N, S) the best lower bounds on spec . logits found in `steps` projected Adam steps on the slopes.

    Args:
        bounds: CROWN's boxes for one chunk of examples.
        spec: (N, S, K) margin rows.
        steps: gradient steps (0 returns the bound at CROWN's slopes).
    """
    if steps < 0:
        raise ValueError(f"alpha-CROWN steps must be >= 0, got {steps}")
    ctx = Backward(optimise=True, memory_mb=bounds.memory_mb)
    with torch.enable_grad():
        lower = bounds.backward(bounds.graph.output, spec.detach(), ctx)
        best = lower.detach()
        slopes = list(ctx.alphas.values())
        if not slopes:
            return best  # no unstable ReLU: nothing to optimise
        opt = torch.optim.Adam(slopes, lr=_LR)
        for _ in range(steps):
            # Gradients w.r.t. the slopes only: the model's parameters must not collect .grad here.
            grads = torch.autograd.grad(-lower.sum(), slopes)
            for p, g in zip(slopes, grads, strict=True):
                p.grad = g
            opt.step()
            with torch.no_grad():
                for p in slopes:
                    p.clamp_(0, 1)
            lower = bounds.backward(bounds.graph.output, spec.detach(), ctx)
            best = torch.maximum(best, lower.detach())
    return best
