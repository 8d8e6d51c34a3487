"""Rules for non-linear ops: ReLU (CROWN's triangle relaxation, lower slope chosen or optimised by alpha-CROWN)
and max-pooling (IBP exact; CROWN: the window's input with the largest lower bound is a lower bound, and the
window's largest upper bound is an upper bound unless one input provably dominates, when the pool is exact).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layer_threat import LayerThreat, UnsupportedLayerError
from .registry import Backward, Box, Node, Rule, call, dot, register_rule

__all__ = ["relu_relaxation"]


def relu_relaxation(lb: Tensor, ub: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(lower_slope, upper_slope, upper_offset, unstable) of CROWN's ReLU relaxation on [lb, ub] (N, *shape).

    Upper: the chord; lower: slope 0 or 1, whichever leaves the smaller area (any slope in [0, 1] is sound).
    """
    active, inactive = lb >= 0, ub <= 0
    unstable = ~active & ~inactive
    width = torch.where(unstable, ub - lb, torch.ones_like(lb))
    one, zero = torch.ones_like(lb), torch.zeros_like(lb)
    upper_slope = torch.where(active, one, torch.where(unstable, ub / width, zero))
    upper_offset = torch.where(unstable, -lb * ub / width, zero)
    lower_slope = torch.where(active, one, torch.where(unstable & (ub > -lb), one, zero))
    return lower_slope, upper_slope, upper_offset, unstable


class ReLURule(Rule):
    """max(x, 0)."""

    exact_box = True
    elementwise = True
    needs_bounds = True

    def relaxed_entries(self, lb: Tensor, ub: Tensor) -> Tensor | None:
        # An inactive entry (ub <= 0) maps to exactly 0 whatever its box. The others matter: the unstable ones'
        # relaxation and the active ones' output box (which the next layer's interval bound reads).
        return ub > 0

    def ibp(self, node: Node, boxes: list[Box], lt: LayerThreat | None) -> Box:
        lb, ub = boxes[0]
        return F.relu(lb), F.relu(ub)  # never the module: an inplace ReLU would overwrite the caller's box

    def backward(self, node: Node, a: Tensor, boxes: list[Box], lt: LayerThreat | None, ctx: Backward) -> Any:
        lb, ub = boxes[0]
        lower_slope, upper_slope, upper_offset, unstable = relu_relaxation(lb, ub)
        lower_slope = lower_slope[:, None]
        alpha = ctx.alpha(node.name, lower_slope.expand(-1, a.shape[1], *node.shape), unstable)
        if alpha is not None:
            lower_slope = torch.where(unstable[:, None], alpha, lower_slope)
        # a_pos * lower + a_neg * upper, with one temporary of a's size fewer.
        a_neg = a.clamp(max=0)
        new_a = torch.addcmul(a * lower_slope, a_neg, upper_slope[:, None] - lower_slope)
        return [new_a], dot(a_neg, upper_offset)

    def backward_patches(self, node: Node, a: Any, boxes: list[Box], lt: LayerThreat | None, ctx: Backward) -> Any:
        lb, ub = boxes[0]
        lower_slope, upper_slope, upper_offset, unstable = relu_relaxation(lb, ub)
        lower = a.gather(lower_slope)  # (N, S, C, kh, kw): the slopes under each row's window
        loose = a.gather(unstable.to(lb.dtype)) > 0
        alpha = ctx.alpha(node.name, lower, loose)
        if alpha is not None:
            lower = torch.where(loose, alpha, lower)
        v = a.values
        v_neg = v.clamp(max=0)
        values = torch.addcmul(v * lower, v_neg, a.gather(upper_slope) - lower)
        return [a.with_values(values)], (v_neg * a.gather(upper_offset)).flatten(2).sum(dim=-1)


class MaxPoolRule(Rule):
    """nn.MaxPool1d / nn.MaxPool2d (no ceil_mode in CROWN)."""

    needs_bounds = True

    def ibp(self, node: Node, boxes: list[Box], lt: LayerThreat | None) -> Box:
        lb, ub = boxes[0]
        return call(node, [lb]), call(node, [ub])  # monotone in every input: exact

    def _windows(self, node: Node, t: Tensor, fill: float) -> tuple[Tensor, tuple[Any, ...]]:
        """(N, C, k, L) the window entries of t (N, C, *spatial), padding as `fill`; and F.fold's arguments."""
        m = node.module
        if m is None or getattr(m, "ceil_mode", False) or getattr(m, "return_indices", False):
            raise UnsupportedLayerError(
                f"CROWN bounds max-pooling modules without ceil_mode or return_indices; op '{node.name}' is not one"
            )
        n, ch = t.shape[:2]
        one_d = isinstance(m, nn.MaxPool1d)
        pair = (lambda v: (1, v if isinstance(v, int) else v[0])) if one_d else nn.modules.utils._pair
        x = t.reshape(n * ch, 1, *((1,) if one_d else ()), *t.shape[2:])
        kernel, stride = pair(m.kernel_size), pair(m.stride if m.stride is not None else m.kernel_size)
        padding, dilation = pair(m.padding), pair(m.dilation)
        if one_d:
            padding, dilation = (0, padding[1]), (1, dilation[1])
        cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
        inside = F.unfold(torch.ones_like(x[:1]), kernel, dilation=dilation, padding=padding, stride=stride) > 0
        cols = cols.masked_fill(~inside, fill)
        return cols.reshape(n, ch, cols.shape[1], cols.shape[2]), (x.shape[2:], kernel, dilation, padding, stride)

    def backward(self, node: Node, a: Tensor, boxes: list[Box], lt: LayerThreat | None, ctx: Backward) -> Any:
        lb, ub = boxes[0]
        lb_cols, (size, kernel, dilation, padding, stride) = self._windows(node, lb, float("-inf"))
        ub_cols, _ = self._windows(node, ub, float("-inf"))
        n, ch, k, length = lb_cols.shape
        best = lb_cols.argmax(dim=2, keepdim=True)  # (N, C, 1, L): the entry with the largest lower bound
        rest = ub_cols.scatter(2, best, float("-inf")).amax(dim=2)
        dominant = lb_cols.gather(2, best).squeeze(2) >= rest  # that entry is the maximum: the pool is exact
        top = ub_cols.amax(dim=2)  # (N, C, L) upper bound of the pool
        b, s = a.shape[:2]
        a_flat = a.reshape(b, s, ch, length)
        a_pos, a_neg = a_flat.clamp(min=0), a_flat.clamp(max=0)
        dom = dominant[:, None]
        # Lower bound: out >= x[best]; upper bound: out <= x[best] if dominant, else out <= top.
        coef = a_pos + torch.where(dom, a_neg, torch.zeros_like(a_neg))
        c = (torch.where(dom, torch.zeros_like(a_neg), a_neg) * top[:, None]).flatten(2).sum(dim=-1)
        nb = max(b, n)
        onehot = torch.zeros((nb, s, ch, k, length), dtype=a.dtype, device=a.device)
        onehot.scatter_(3, best[:, None].expand(nb, s, ch, 1, length), coef.expand(nb, s, ch, length)[:, :, :, None])
        folded = F.fold(
            onehot.reshape(nb * s * ch, k, length), size, kernel, dilation=dilation, padding=padding, stride=stride
        )
        return [folded.reshape(nb, s, *lb.shape[1:])], c


register_rule(nn.ReLU, ReLURule())
register_rule(F.relu, ReLURule())
register_rule(torch.relu, ReLURule())
register_rule("Tensor.relu", ReLURule())
register_rule(nn.MaxPool1d, MaxPoolRule())
register_rule(nn.MaxPool2d, MaxPoolRule())
