"""Interval bound propagation under the joint threat (THEORY.md section 5).

Every layer type has one rule in `IBP_RULES`: given a box [lb, ub] that contains every input the layer can
receive (and the threat at the layer, for weight layers), return a box that contains every output. A weight
layer's box adds the Lemma 1 term maximised over the input box. Rules must be sound for every example of the
batch independently; tightness is a bonus. Add a layer type with `register_ibp_rule`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Normalize
from ..threat import ThreatModel
from .layers import (
    LayerThreat,
    UnsupportedLayerError,
    apply_weight,
    clean_logits,
    layer_threats,
    receptive_max,
    sequential_layers,
)
from .margins import BoundMethod, MarginBounds

__all__ = [
    "IBP_RULES",
    "Box",
    "IntervalRule",
    "elided_margin_lower",
    "find_rule",
    "ibp_margin_bounds",
    "propagate_boxes",
    "register_ibp_rule",
]

Box = tuple[Tensor, Tensor]
#: rule(module, lb, ub, layer_threat) -> (lb, ub); layer_threat is None for layers the threat leaves alone.
IntervalRule = Callable[[nn.Module, Tensor, Tensor, LayerThreat | None], Box]


def _affine(module: nn.Module, lb: Tensor, ub: Tensor, lt: LayerThreat | None) -> Box:
    """Linear / Conv: W'h + b' over h in [lb, ub], W' in the layer's weight ball, b' in its bias box."""
    if not isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
        raise UnsupportedLayerError(f"the affine rule bounds Linear and Conv layers, not {type(module).__name__}")
    w = module.weight.to(lb.dtype)
    if lt is not None and lt.rho is not None and bool((lb >= 0).all()):
        # Non-negative inputs (after a ReLU): sum_j W'_ij h_j is a sum of independent interval products, whose
        # exact range takes W'_ij at W - rho or W + rho by the sign of that end point. Tighter than the
        # midpoint-radius form below by 2 rho (ub - lb) per term.
        w_lo, w_hi = w - lt.rho, w + lt.rho
        lo = apply_weight(module, lb, w_lo.clamp(min=0)) + apply_weight(module, ub, w_lo.clamp(max=0))
        hi = apply_weight(module, ub, w_hi.clamp(min=0)) + apply_weight(module, lb, w_hi.clamp(max=0))
    else:
        w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
        lo = apply_weight(module, lb, w_pos) + apply_weight(module, ub, w_neg)
        hi = apply_weight(module, ub, w_pos) + apply_weight(module, lb, w_neg)
        if lt is not None:
            # Lemma 1 maximised over the box: sum_j rho_ij max(|lb_j|, |ub_j|), or e * max_j of the same.
            a = torch.maximum(lb.abs(), ub.abs())
            term = (
                apply_weight(module, a, lt.rho)
                if lt.rho is not None
                else lt.operator_radius() * receptive_max(module, a)
            )
            lo, hi = lo - term, hi + term
    if module.bias is not None:
        shape = (-1,) if isinstance(module, nn.Linear) else (-1, *([1] * (lo.dim() - 2)))
        b = module.bias.to(lb.dtype).reshape(shape)
        lo, hi = lo + b, hi + b
        if lt is not None and lt.beta is not None:
            beta = lt.beta.reshape(shape)
            lo, hi = lo - beta, hi + beta
    return lo, hi


def _normalize(module: nn.Module, lb: Tensor, ub: Tensor, lt: LayerThreat | None) -> Box:
    """Element-wise affine: the end points map to end points (ordered, whatever the sign of std)."""
    a, b = module(lb), module(ub)
    return torch.minimum(a, b), torch.maximum(a, b)


def _relu(module: nn.Module, lb: Tensor, ub: Tensor, lt: LayerThreat | None) -> Box:
    return F.relu(lb), F.relu(ub)  # not module(...): an inplace ReLU would overwrite the caller's box


def _monotone(module: nn.Module, lb: Tensor, ub: Tensor, lt: LayerThreat | None) -> Box:
    """Maps that are non-decreasing in every input (flatten, pooling): apply to both ends."""
    return module(lb), module(ub)


def _identity(module: nn.Module, lb: Tensor, ub: Tensor, lt: LayerThreat | None) -> Box:
    """Identity, and dropout, which bounds treat as in eval mode."""
    return lb, ub


#: Layer type -> interval rule. Subclasses use their base's rule only if they keep its forward.
IBP_RULES: dict[type[nn.Module], IntervalRule] = {
    Normalize: _normalize,
    nn.Flatten: _monotone,
    nn.Linear: _affine,
    nn.Conv1d: _affine,
    nn.Conv2d: _affine,
    nn.ReLU: _relu,
    nn.MaxPool1d: _monotone,
    nn.MaxPool2d: _monotone,
    nn.AvgPool1d: _monotone,
    nn.AvgPool2d: _monotone,
    nn.Identity: _identity,
    nn.Dropout: _identity,
}


def register_ibp_rule(layer_type: type[nn.Module], rule: IntervalRule) -> None:
    """Make IBP (and CROWN's interval steps) bound `layer_type` with `rule(module, lb, ub, layer_threat)`."""
    IBP_RULES[layer_type] = rule


def find_rule(table: dict[type[nn.Module], IntervalRule], name: str, module: nn.Module, method: str) -> IntervalRule:
    """The rule for `module`, looked up along its class hierarchy.

    Raises:
        UnsupportedLayerError: no rule, or a subclass that overrides the forward its base's rule describes.
    """
    for cls in type(module).__mro__:
        if cls in table:
            if type(module).forward is cls.forward:
                return table[cls]
            break
    known = ", ".join(sorted(c.__name__ for c in table))
    raise UnsupportedLayerError(
        f"{method} has no bound rule for layer '{name}' ({type(module).__name__}); supported: {known}. "
        f"To add one, write rule(module, lb, ub, layer_threat) -> (lb, ub) returning a box that contains every "
        f"output for inputs in [lb, ub], and register it with "
        f"nonsingular.bounds.register_ibp_rule({type(module).__name__}, rule)"
    )


def propagate_boxes(
    layers: Sequence[tuple[str, nn.Module]], threats: dict[str, LayerThreat], lb: Tensor, ub: Tensor
) -> list[Box]:
    """Boxes before and after every layer: [input box, after layer 1, ..., after the last layer]."""
    boxes = [(lb, ub)]
    for name, module in layers:
        rule = find_rule(IBP_RULES, name, module, "IBP")
        boxes.append(rule(module, *boxes[-1], threats.get(name)))
    return boxes


def elided_margin_lower(module: nn.Linear, lt: LayerThreat | None, lb: Tensor, ub: Tensor, y: Tensor) -> Tensor:
    """(N, K) lower bounds on m_k = (W'_y - W'_k) h + b'_y - b'_k for h in [lb, ub] (N, n): the last layer folded
    into the margin, so that rows y and k are bounded jointly rather than as two separate logits.

    Column y is meaningless (set it to 0 afterwards).
    """
    w = module.weight.to(lb.dtype)
    c = w[y][:, None, :] - w[None, :, :]  # (N, K, n)
    if lt is not None and lt.rho is not None and bool((lb >= 0).all()):
        # Rows y and k move independently: each coefficient of the margin lies in C +- (rho_y + rho_k).
        c = c - (lt.rho[y][:, None, :] + lt.rho[None, :, :])
        lower = (c.clamp(min=0) * lb[:, None, :] + c.clamp(max=0) * ub[:, None, :]).sum(dim=-1)
    else:
        lower = (c.clamp(min=0) * lb[:, None, :] + c.clamp(max=0) * ub[:, None, :]).sum(dim=-1)
        if lt is not None:
            a = torch.maximum(lb.abs(), ub.abs())
            term = (
                F.linear(a, lt.rho)
                if lt.rho is not None
                else (lt.operator_radius() * a.amax(dim=1, keepdim=True)).expand(-1, w.shape[0])
            )
            lower = lower - term.gather(1, y[:, None]) - term
    if module.bias is not None:
        b = module.bias.to(lb.dtype)
        lower = lower + b[y][:, None] - b[None, :]
        if lt is not None and lt.beta is not None:
            lower = lower - lt.beta[y][:, None] - lt.beta[None, :]
    return lower


def margin_lower_from_box(lb: Tensor, ub: Tensor, y: Tensor) -> Tensor:
    """(N, K) margin lower bounds l_y - u_k from a logit box, when the last layer cannot be folded in."""
    return lb.gather(1, y[:, None]) - ub


def finish_margins(lower: Tensor, y: Tensor) -> Tensor:
    """Set the margin of each example's own class to exactly 0."""
    return lower.masked_fill(F.one_hot(y, lower.shape[1]).bool(), 0.0)


def check_logits(name: str, out: Tensor) -> None:
    if out.dim() != 2:
        raise UnsupportedLayerError(
            f"bounds need (N, classes) logits; the model's last layer '{name}' gives shape {tuple(out.shape)}"
        )


def ibp_margin_bounds(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> MarginBounds:
    """Margin lower bounds by interval propagation, the last Linear layer folded into the margin.

    Args:
        model: nn.Sequential of layers with a rule in IBP_RULES.
        x: (N, *input_shape) in threat.domain; bounds are computed in x's dtype.
        y: (N,) labels.
        threat: per-example joint threat (a shared-scope threat is a subset, so the bounds hold for it too).
    """
    layers = sequential_layers(model)
    threats = layer_threats(model, threat, x.dtype)
    lb, ub = threat.input_bounds(x)
    last_name, last = layers[-1]
    elide = type(last) is nn.Linear
    boxes = propagate_boxes(layers[:-1] if elide else layers, threats, lb, ub)
    if elide and isinstance(last, nn.Linear):
        lower = elided_margin_lower(last, threats.get(last_name), *boxes[-1], y)
    else:
        check_logits(last_name, boxes[-1][0])
        lower = margin_lower_from_box(*boxes[-1], y)
    return MarginBounds(
        lower=finish_margins(lower, y), y=y, clean_logits=clean_logits(model, x), method=BoundMethod.IBP
    )
