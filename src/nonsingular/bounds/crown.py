"""CROWN-style backward linear relaxation for MLPs under the joint threat.

A lower bound on a linear function A z of a layer's output is carried backward as A' h + c over the layer's
input h, down to the input box, where it is minimised in closed form. Weight layers use Lemma 1 exactly for
fixed A: min over D of A D h = -|A| rho |h| (element-wise ball), and |h| = h after a ReLU, so the weight term
stays linear in h; where h may be negative, |h| is replaced by its chord over h's interval (an upper bound).
The operator ball's term -|A| e ||h||_inf is bounded with the largest |h| in the box (an additive interval).
ReLUs use CROWN's relaxation (upper: chord; lower: slope 0 or 1, whichever is closer).

Intermediate bounds of every pre-activation are computed by the same backward pass and intersected with
interval bounds, and the final margins are the better of CROWN's and IBP's, so the result is never looser
than `ibp_margin_bounds`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from ..models import Normalize
from ..threat import ThreatModel
from .ibp import (
    IBP_RULES,
    check_logits,
    elided_margin_lower,
    find_rule,
    finish_margins,
    margin_lower_from_box,
    propagate_boxes,
)
from .layers import LayerThreat, UnsupportedLayerError, clean_logits, layer_threats, sequential_layers
from .margins import BoundMethod, MarginBounds, margin_spec

__all__ = ["crown_margin_bounds"]

#: Layers before the first Linear that map a box exactly onto a box (element-wise monotone or a permutation).
_PREFIX_TYPES: tuple[type[nn.Module], ...] = (Normalize, nn.Flatten, nn.Identity, nn.Dropout, nn.ReLU)
#: Layers between Linear layers that are the identity on (N, features) tensors.
_PASS_TYPES: tuple[type[nn.Module], ...] = (nn.Flatten, nn.Identity, nn.Dropout)
#: Memory budget for the (examples x spec rows x features) coefficient tensors of one chunk.
_CHUNK_BYTES = 256 * 2**20


def _unsupported(name: str, module: nn.Module, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"CROWN has no rule for layer '{name}' ({type(module).__name__}) {why}; it supports MLPs: "
        f"Normalize/Flatten, then Linear layers with ReLUs between them. Use method='ibp' for this model, "
        f"or implement a backward rule for {type(module).__name__} in nonsingular/bounds/crown.py"
    )


def _split(layers: Sequence[tuple[str, nn.Module]]) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """(prefix, body): box-exact layers before the first Linear, then Linear and ReLU layers only."""
    first = next((i for i, (_, m) in enumerate(layers) if type(m) is nn.Linear), None)
    if first is None:
        raise UnsupportedLayerError("CROWN needs at least one nn.Linear layer; use method='ibp'")
    prefix = list(layers[:first])
    for name, module in prefix:
        find_rule(IBP_RULES, name, module, "CROWN")  # a subclass with its own forward is refused here
        if not isinstance(module, _PREFIX_TYPES):
            raise _unsupported(name, module, "before the first Linear layer")
    body = []
    for name, module in layers[first:]:
        if type(module) in (nn.Linear, nn.ReLU):
            body.append((name, module))
        elif isinstance(module, _PASS_TYPES):
            find_rule(IBP_RULES, name, module, "CROWN")
        else:
            raise _unsupported(name, module, "after the first Linear layer")
    return prefix, body


def _dot(a: Tensor, v: Tensor) -> Tensor:
    """sum_j a[..., s, j] v[n, j] -> (N, S); a is (S, n) shared by all examples or (N, S, n)."""
    if a.dim() == 2:
        return v @ a.T
    return (a @ v.unsqueeze(-1)).squeeze(-1)


def _abs_chord(lb: Tensor, ub: Tensor) -> tuple[Tensor, Tensor]:
    """(slope, offset) with |h| <= slope * h + offset on [lb, ub], equality at both ends (N, n)."""
    unstable = (lb < 0) & (ub > 0)
    width = torch.where(unstable, ub - lb, torch.ones_like(lb))
    slope = torch.where(unstable, (ub + lb) / width, torch.where(lb >= 0, 1.0, -1.0).to(lb))
    offset = torch.where(unstable, -2 * ub * lb / width, torch.zeros_like(lb))
    return slope, offset


def _back_linear(
    a: Tensor, c: Tensor, module: nn.Linear, lt: LayerThreat | None, lb: Tensor, ub: Tensor
) -> tuple[Tensor, Tensor]:
    """Carry the lower bound a z + c, z = W'h + b', back to a' h + c' over h in [lb, ub].

    a: (S, out) or (N, S, out); c: broadcastable to (N, S). lb, ub: (N, in) bounds of the layer input h.
    """
    dtype = lb.dtype
    w = module.weight.to(dtype)
    new_a = a @ w
    if module.bias is not None:
        c = c + a @ module.bias.to(dtype)
    if lt is None:
        return new_a, c
    abs_a = a.abs()
    if lt.beta is not None:
        c = c - abs_a @ lt.beta
    if lt.rho is not None:
        # min over D of a D h = -(|a| rho) |h|, exact for fixed a (Lemma 1 row by row).
        r = abs_a.sum(dim=-1, keepdim=True) * lt.uniform if lt.uniform is not None else abs_a @ lt.rho
        if bool((lb >= 0).all()):
            new_a = new_a - r
        else:
            slope, offset = _abs_chord(lb, ub)
            new_a = new_a - r * slope[:, None, :]
            c = c - (r * offset[:, None, :]).sum(dim=-1)
    else:
        h_max = torch.maximum(lb.abs(), ub.abs()).amax(dim=1)  # (N,)
        c = c - abs_a.sum(dim=-1) * lt.operator_radius() * h_max[:, None]
    return new_a, c


def _back_relu(a: Tensor, c: Tensor, lb: Tensor, ub: Tensor) -> tuple[Tensor, Tensor]:
    """Carry the lower bound a h + c, h = ReLU(z), back to z in [lb, ub] (N, n)."""
    active, inactive = lb >= 0, ub <= 0
    unstable = ~active & ~inactive
    width = torch.where(unstable, ub - lb, torch.ones_like(lb))
    one, zero = torch.ones_like(lb), torch.zeros_like(lb)
    upper_slope = torch.where(active, one, torch.where(unstable, ub / width, zero))
    upper_offset = torch.where(unstable, -lb * ub / width, zero)
    # Lower relaxation h >= alpha z for any alpha in [0, 1]; CROWN's choice keeps the smaller area.
    lower_slope = torch.where(active, one, torch.where(unstable & (ub > -lb), one, zero))
    a_pos, a_neg = a.clamp(min=0), a.clamp(max=0)
    new_a = a_pos * lower_slope[:, None, :] + a_neg * upper_slope[:, None, :]
    c = c + (a_neg * upper_offset[:, None, :]).sum(dim=-1)
    return new_a, c


class _Network:
    """The body of an MLP with the boxes found so far; bounds linear functions of any Linear's output."""

    def __init__(self, body: list[tuple[str, nn.Module]], threats: dict[str, LayerThreat], lb: Tensor, ub: Tensor):
        self.body, self.threats = body, threats
        self.inputs: list[tuple[Tensor, Tensor]] = []  # box of each body layer's input
        box = (lb, ub)
        for i, (name, module) in enumerate(body):
            self.inputs.append(box)
            if type(module) is nn.ReLU:
                box = (box[0].clamp(min=0), box[1].clamp(min=0))
                continue
            lo, hi = IBP_RULES[nn.Linear](module, *box, threats.get(name))
            if i < len(body) - 1:
                lo, hi = self._tighten(i, lo, hi)
            box = (lo, hi)
        self.output = box

    def backward(self, last: int, a: Tensor) -> Tensor:
        """(N, S) lower bounds on a z over the threat set, z the output of body layer `last`.

        a: (S, out) shared or (N, S, out) per example.
        """
        c = torch.zeros((), dtype=a.dtype, device=a.device)
        for i in range(last, -1, -1):
            name, module = self.body[i]
            lb, ub = self.inputs[i]
            if type(module) is nn.ReLU:
                a, c = _back_relu(a, c, lb, ub)
            else:
                a, c = _back_linear(a, c, cast(nn.Linear, module), self.threats.get(name), lb, ub)
        lb0, ub0 = self.inputs[0]
        return c + _dot(a.clamp(min=0), lb0) + _dot(a.clamp(max=0), ub0)

    def _tighten(self, i: int, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Intersect the interval bounds of layer i's output with CROWN's."""
        n = lo.shape[1]
        eye = torch.eye(n, dtype=lo.dtype, device=lo.device)
        bound = self.backward(i, torch.cat([eye, -eye]))
        lo, hi = torch.maximum(lo, bound[:, :n]), torch.minimum(hi, -bound[:, n:])
        # Both are sound; if rounding crosses them, keep an interval that contains both end points.
        return torch.minimum(lo, hi), torch.maximum(lo, hi)


def _chunk_size(body: list[tuple[str, nn.Module]], n: int) -> int:
    widths = [m.out_features for _, m in body if type(m) is nn.Linear] + [cast(nn.Linear, body[0][1]).in_features]
    per_example = 2 * max(widths) ** 2 * 8 * 3  # a, |a| and a product, float64
    return max(1, min(n, _CHUNK_BYTES // per_example))


def crown_margin_bounds(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> MarginBounds:
    """Margin lower bounds by backward linear relaxation; never looser than IBP.

    Args:
        model: nn.Sequential MLP: Normalize/Flatten, then Linear layers with ReLUs between them.
        x: (N, *input_shape) in threat.domain; bounds are computed in x's dtype.
        y: (N,) labels.
        threat: per-example joint threat (bounds hold for the shared scope too, a subset).

    Raises:
        UnsupportedLayerError: any other layer (convolutions: use IBP).
    """
    layers = sequential_layers(model)
    prefix, body = _split(layers)
    threats = layer_threats(model, threat, x.dtype)
    lb, ub = threat.input_bounds(x)
    lb, ub = propagate_boxes(prefix, threats, lb, ub)[-1]
    if lb.dim() != 2:
        raise _unsupported(body[0][0], body[0][1], f"on inputs of shape {tuple(lb.shape[1:])} (flatten them first)")
    logits = clean_logits(model, x)
    num_classes = logits.shape[1]
    parts = []
    step = _chunk_size(body, len(y))
    for s in range(0, len(y), step):
        net = _Network(body, threats, lb[s : s + step], ub[s : s + step])
        ys = y[s : s + step]
        last_name, last = body[-1]
        spec = margin_spec(ys, num_classes, x.dtype)
        lower = net.backward(len(body) - 1, spec)
        if type(last) is nn.Linear:
            ibp = elided_margin_lower(last, threats.get(last_name), *net.inputs[-1], ys)
        else:
            check_logits(last_name, net.output[0])
            ibp = margin_lower_from_box(*net.output, ys)
        parts.append(torch.maximum(lower, ibp))
    return MarginBounds(lower=finish_margins(torch.cat(parts), y), y=y, clean_logits=logits, method=BoundMethod.CROWN)
