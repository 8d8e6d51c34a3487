"""Lower bounds on linear output specifications over an input box and the weight ball: the verification
property's objective (THEORY.md section 12).

`margin_bounds` bounds the margins z_y - z_k over the threat's l_inf ball around data points; a VNNLIB property
instead names an arbitrary input box (any scale, zero-width dimensions allowed) and rows C f(x) - d. Both are the
same backward pass (engine.py's `GraphBounds.backward` takes any spec); only the input set and the spec rows
differ, so this module reuses the trace, the rules and alpha-CROWN unchanged:

```python
lower = spec_bounds(model, lb, ub, C, d, method="crown")   # (N, S): C f(x) - d >= lower on the whole box
```
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..threat import ThreatModel
from .alpha import optimise_margins
from .engine import GraphBounds
from .graph import trace
from .layer_threat import UnsupportedLayerError, layer_threats
from .margin_driver import _alpha_examples
from .margins import BoundMethod
from .registry import DEFAULT_MEMORY_MB, Backward, dot

__all__ = ["spec_bounds"]


def _spec_ibp(bounds: GraphBounds, spec: Tensor) -> Tensor:
    """(N, S) interval lower bound on spec . output; an elided last Linear is folded into the spec rows (one
    backward step through it, Lemma 1 exact for the fixed rows) rather than boxed per output."""
    graph = bounds.graph
    out = graph.by_name[graph.output]
    if out.name in bounds.boxes:
        lb, ub = bounds.boxes[out.name]
        return dot(spec.clamp(min=0), lb) + dot(spec.clamp(max=0), ub)
    if out.rule is None:
        raise RuntimeError(f"output node '{out.name}' has no rule")
    boxes = [bounds.boxes[i] for i in out.inputs]
    parts, offset = out.rule.backward(out, spec, boxes, bounds.threat(out), Backward(memory_mb=bounds.memory_mb))
    lower = torch.as_tensor(offset, dtype=spec.dtype).expand(boxes[0][0].shape[0], spec.shape[1])
    for part, (lb, ub) in zip(parts, boxes, strict=True):
        if part is not None:
            lower = lower + dot(part.clamp(min=0), lb) + dot(part.clamp(max=0), ub)
    return lower


def spec_bounds(
    model: nn.Module,
    lower: Tensor,
    upper: Tensor,
    C: Tensor,
    d: Tensor,
    threat: ThreatModel | None = None,
    method: BoundMethod | str = BoundMethod.CROWN,
    *,
    memory_mb: float = DEFAULT_MEMORY_MB,
    alpha_steps: int = 20,
    executed_roundoff: float | None = None,
) -> Tensor:
    """(N, S) lower bounds on (C f'(x) - d) over every x in [lower, upper] and every weight in the threat's ball.

    Computed in lower's dtype (float64 for verification); the model is never modified. Row s of a box is
    verified empty of counterexamples to `C[s] y <= d[s]` when its bound is > 0.

    Args:
        model: any model the bound engine traces (see `margin_bounds`), returning (N, K) outputs.
        lower, upper: (N, *input_shape) the input boxes, lower <= upper, finite, any scale.
        C: (S, K) or (N, S, K) spec rows over the outputs.
        d: (S,) or (N, S) right-hand sides.
        threat: the weight ball (eps_w, mode, ball, layers, eps_b); its input part must be empty (eps_x = 0):
            the input set is the box. None: the weights are exact.
        method: "ibp", "crown" or "alpha-crown" (never looser than crown, itself never looser than ibp).
        memory_mb: budget for one chunk's coefficient tensors, MiB.
        alpha_steps: alpha-CROWN's gradient steps on the ReLU slopes.
        executed_roundoff: bound the model as executed in a precision with this unit roundoff (float32: 2^-24,
            rounding.FLOAT32_UNIT_ROUNDOFF) instead of in exact arithmetic (rounding.py; THEORY.md section 13).

    Raises:
        ValueError: mismatched shapes, an empty or non-finite box, eps_x > 0, the norm method, or an op the
            method cannot bound (UnsupportedLayerError).
    """
    try:
        method = BoundMethod(method)
    except ValueError:
        raise ValueError(f"unknown bound method {method!r}; choose ibp, crown or alpha-crown") from None
    if method is BoundMethod.NORM:
        raise ValueError("spec_bounds takes ibp, crown or alpha-crown (the norm bound speaks of margins only)")
    if threat is None:
        threat = ThreatModel()
    if threat.eps_x > 0:
        raise ValueError("spec_bounds: the input set is the box; give a threat with eps_x = 0 (weights only)")
    if lower.shape != upper.shape or lower.dim() < 2 or not lower.is_floating_point():
        raise ValueError(
            f"lower and upper must be floating (N, *input_shape) of one shape, got "
            f"{tuple(lower.shape)} and {tuple(upper.shape)}"
        )
    if not (torch.isfinite(lower).all() and torch.isfinite(upper).all()) or bool((lower > upper).any()):
        raise ValueError("the input box must be finite with lower <= upper")
    if not (memory_mb > 0 and math.isfinite(memory_mb)) or alpha_steps < 0:
        raise ValueError(f"memory_mb must be > 0 and alpha_steps >= 0, got {memory_mb}, {alpha_steps}")
    n, dtype = lower.shape[0], lower.dtype
    graph, logits = trace(model, (lower + upper) / 2)
    if logits.dim() != 2:
        raise UnsupportedLayerError(f"spec bounds need (N, outputs); the model returns shape {tuple(logits.shape)}")
    spec = C.to(dtype)
    spec = spec[None] if spec.dim() == 2 else spec
    rhs = d.to(dtype)
    rhs = rhs[None].expand(n, -1) if rhs.dim() == 1 else rhs
    if (
        spec.dim() != 3
        or spec.shape[2] != logits.shape[1]
        or spec.shape[0] not in (1, n)
        or rhs.shape != (n, spec.shape[1])
    ):
        raise ValueError(
            f"C must be (S, {logits.shape[1]}) or ({n}, S, {logits.shape[1]}) and d (S,) or ({n}, S); "
            f"got {tuple(C.shape)} and {tuple(d.shape)}"
        )
    spec = spec.expand(n, -1, -1)
    threats = layer_threats(model, threat, dtype)
    if method is BoundMethod.IBP:
        bounds = GraphBounds(graph, threats, lower, upper, memory_mb=memory_mb, roundoff=executed_roundoff)
        return _spec_ibp(bounds, spec) - rhs
    step = n
    if method is BoundMethod.ALPHA_CROWN:
        step = _alpha_examples(graph, n, lower.element_size(), memory_mb)
    parts = []
    for s in range(0, n, step):
        bounds = GraphBounds(
            graph,
            threats,
            lower[s : s + step],
            upper[s : s + step],
            crown=True,
            memory_mb=memory_mb,
            roundoff=executed_roundoff,
        )
        rows = spec[s : s + step]
        best = torch.maximum(bounds.backward(graph.output, rows), _spec_ibp(bounds, rows))
        if method is BoundMethod.ALPHA_CROWN:
            best = torch.maximum(best, optimise_margins(bounds, rows, alpha_steps))
        parts.append(best)
    return torch.cat(parts) - rhs
