"""alpha-CROWN: CROWN with every lower ReLU slope optimised by projected gradient ascent on the margins.

Any lower slope in [0, 1] gives a sound relaxation of an unstable ReLU, so every iterate's bound is sound,
intermediate boxes included. Each backward pass has its own slopes (per example, per spec row): the final
margins' and those of every tightened node, so the intermediate boxes tighten along the way (they are
recomputed, differentiably, at every step). The result is the element-wise best over CROWN and all iterates,
hence never looser than CROWN. It is not differentiable in the weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .engine import GraphBounds
from .registry import Backward

__all__ = ["optimise_margins"]

#: Adam step size on the slopes (they live in [0, 1]).
_LR = 0.25


def optimise_margins(bounds: GraphBounds, spec: Tensor, steps: int, final_only: bool = False) -> Tensor:
    """(N, S) the best lower bounds on spec . logits found in `steps` projected Adam steps on the slopes.

    Args:
        bounds: CROWN's boxes for one chunk of examples (its graph, threat, input box and memory budget are reused).
        spec: (N, S, K) margin rows.
        steps: gradient steps (0 returns the bound at CROWN's slopes).
        final_only: optimise only the final margins' slopes, on CROWN's intermediate boxes (auto_LiRPA's default,
            `enable_opt_interm_bounds = False`): one backward pass per step instead of every tightening pass
            again, looser where the intermediate boxes matter.
    """
    if steps < 0:
        raise ValueError(f"alpha-CROWN steps must be >= 0, got {steps}")
    graph, (lb, ub) = bounds.graph, bounds.boxes[bounds.graph.input]
    ctx = Backward(optimise=True, memory_mb=bounds.memory_mb)
    best: Tensor | None = None
    opt: torch.optim.Optimizer | None = None
    with torch.enable_grad():
        for step in range(steps + 1):
            if final_only:
                lower = bounds.backward(graph.output, spec.detach(), ctx=ctx, scope=-1)
            else:
                # Intersected with CROWN's boxes: an iterate's intermediate bounds are never looser than CROWN's.
                current = GraphBounds(
                    graph, bounds.threats, lb, ub, crown=True, memory_mb=bounds.memory_mb, ctx=ctx, floor=bounds.boxes
                )
                lower = current.backward(graph.output, spec.detach(), scope=-1)
            best = lower.detach() if best is None else torch.maximum(best, lower.detach())
            slopes = list(ctx.alphas.values())
            if step == steps or not slopes:
                break
            if opt is None:
                opt = torch.optim.Adam(slopes, lr=_LR)
            # Gradients w.r.t. the slopes only: the model's parameters must not collect .grad here.
            grads = torch.autograd.grad(-lower.sum(), slopes, allow_unused=True)
            for p, g in zip(slopes, grads, strict=True):
                p.grad = g
            opt.step()
            with torch.no_grad():
                for p in slopes:
                    p.clamp_(0, 1)
    if best is None:  # the loop runs at least once
        raise RuntimeError("alpha-CROWN ran no step")
    return best
