"""A reference joint attack written out in full, to check the library's attacks against (tests only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap


def explicit_joint_pgd(model: nn.Module, x: Tensor, y: Tensor, eps_x: float, eps_w: float, steps: int) -> float:
    """Accuracy under PGD over explicit per-example weight tensors (every weight matrix, absolute element-wise
    eps_w; inputs in [0, 1]), written as a researcher would, from the clean point with step 2.5 / steps of each
    radius. An example counts as broken if any step misclassifies it. Reference only: no library code."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = [k for k in params if k.endswith("weight")]
    delta = {k: torch.zeros(len(x), *params[k].shape) for k in names}
    lb, ub = (x - eps_x).clamp(0, 1), (x + eps_x).clamp(0, 1)
    x_adv = x.clone()
    fooled = torch.zeros(len(x), dtype=torch.bool)

    def one(p, xi):
        return functional_call(model, {**params, **p}, (xi[None],))[0]

    for step in range(steps + 1):
        x_adv.requires_grad_(True)
        for d in delta.values():
            d.requires_grad_(True)
        logits = vmap(one)({k: params[k] + delta[k] for k in names}, x_adv)
        fooled |= logits.argmax(1) != y
        if step == steps:
            break
        grads = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), [x_adv, *delta.values()])
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + 2.5 / steps * eps_x * grads[0].sign(), lb), ub)
            delta = {
                k: (delta[k] + 2.5 / steps * eps_w * g.sign()).clamp(-eps_w, eps_w)
                for k, g in zip(names, grads[1:], strict=True)
            }
    return 1 - fooled.float().mean().item()
