"""One entry point for every bound method: `margin_bounds(model, x, y, threat, method=...)`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..runtime.memory import within_memory
from ..threat import ThreatModel
from .graph import trace
from .layer_threat import UnsupportedLayerError
from .margin_driver import graph_margin_bounds
from .margins import BoundMethod, MarginBounds
from .norm import norm_margin_bounds
from .registry import DEFAULT_MEMORY_MB, Rule
from .rounding import forward_error_bound, margin_error_bound

__all__ = ["DEFAULT_ALPHA_STEPS", "margin_bounds", "supported_methods"]

#: alpha-CROWN's default number of projected gradient steps on the ReLU slopes.
DEFAULT_ALPHA_STEPS = 20


def margin_bounds(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    method: BoundMethod | str = BoundMethod.CROWN,
    *,
    memory_mb: float = DEFAULT_MEMORY_MB,
    alpha_steps: int = DEFAULT_ALPHA_STEPS,
    alpha_final_only: bool = False,
) -> MarginBounds:
    """Lower bounds on every margin z'_y - z'_k over the per-example joint threat set, with a bound on how far the
    model as executed (its own dtype, any summation order, TF32 where torch allows it) can be from them
    (`MarginBounds.execution_error`; `worst` and `certified` speak of the executed model; bounds/rounding.py).

    Computed in x's dtype (pass float64 inputs for certificates whose rounding is negligible; the weights are
    cast, the model is never modified) and differentiable in the model's parameters (except alpha-crown): call it
    under `torch.no_grad()` unless you need that gradient, or autograd keeps every coefficient tensor alive (5.1 GB
    instead of 1.2 GB for 4 MNIST examples of a small CNN under a weight threat).

    Args:
        model: norm: a feed-forward nn.Sequential ReLU chain (Linear/Conv, pooling); ibp, crown, alpha-crown: any
            model torch.fx can trace whose ops have rules (Linear, Conv1d/2d, ReLU, BatchNorm, residual add, cat,
            reshapes, pooling, Normalize; see docs/bound-engine.md).
        x: (N, *input_shape) in threat.domain.
        y: (N,) labels.
        threat: the threat set; bounds are per-example, hence also valid for the shared scope.
        method: "norm" (Theorem 2), "ibp", "crown" or "alpha-crown".
        memory_mb: CROWN's budget for one chunk's coefficient tensors, MiB (default 256); when an allocation
            fails anyway (a memory limit below the budget), the bound is recomputed with half the budget, down
            to 1 MiB, then fails with a one-line ResourceError (runtime/memory.py).
        alpha_steps: alpha-CROWN's gradient steps on the ReLU slopes (default 20).
        alpha_final_only: alpha-CROWN optimises only the final margins' slopes on CROWN's intermediate boxes
            (auto_LiRPA's default; one backward pass per step) instead of every pass's (default; tighter).

    Raises:
        ValueError: an unknown method, mismatched shapes, bad options, or an op the method cannot bound
            (UnsupportedLayerError, which names the op and where to add its rule).
    """
    try:
        method = BoundMethod(method)
    except ValueError:
        raise ValueError(f"unknown bound method {method!r}; choose one of {[m.value for m in BoundMethod]}") from None
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if not (memory_mb > 0 and math.isfinite(memory_mb)):
        raise ValueError(f"memory_mb must be a positive number of MiB, got {memory_mb}")
    if alpha_steps < 0:
        raise ValueError(f"alpha_steps must be >= 0, got {alpha_steps}")
    if method is BoundMethod.NORM:
        bounds = norm_margin_bounds(model, x, y, threat)
        lb, ub = threat.input_bounds(x)
        bounds.execution_error = margin_error_bound(forward_error_bound(model, lb, ub, threat), y).to(x.dtype)
        return bounds
    chosen = method

    def run(budget: float) -> MarginBounds:
        return graph_margin_bounds(
            model, x, y, threat, chosen, memory_mb=budget, alpha_steps=alpha_steps, alpha_final_only=alpha_final_only
        )

    # Out of memory (an address-space limit, a busy GPU): smaller chunks, then a one-line ResourceError.
    return within_memory(run, memory_mb, f"the {method.value} bound")


def supported_methods(model: nn.Module, x: Tensor, threat: ThreatModel) -> list[BoundMethod]:
    """The bound methods that can bound `model`, in BoundMethod order (checked on the first example of x).

    norm: a feed-forward Sequential chain; ibp: a traceable graph whose ops all have rules; crown and alpha-crown:
    additionally a backward rule for every op.
    """
    first, label = x[:1], torch.zeros(1, dtype=torch.long, device=x.device)
    out = []
    try:
        with torch.no_grad():
            norm_margin_bounds(model, first, label, threat)
        out.append(BoundMethod.NORM)
    except UnsupportedLayerError:
        pass
    try:
        with torch.no_grad():
            graph, _ = trace(model, first)
    except UnsupportedLayerError:
        return out
    out.append(BoundMethod.IBP)
    if all(type(n.rule).backward is not Rule.backward for n in graph.nodes if n.rule is not None):
        out += [BoundMethod.CROWN, BoundMethod.ALPHA_CROWN]
    return out
