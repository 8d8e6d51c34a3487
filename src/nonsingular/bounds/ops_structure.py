"""Rules for ops without weights: reshapes, identity maps, sums, scaling by constants, concatenation, and
average pooling (a fixed linear map with non-negative coefficients, so IBP applies it to both box ends and
CROWN carries coefficients back through its adjoint).
"""

from __future__ import annotations

import math
import operator
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layer_threat import LayerThreat, UnsupportedLayerError
from .ops_affine import conv_adjoint, conv_patches
from .registry import Backward, Box, Input, Node, Rule, call, register_rule

__all__: list[str] = []


class IdentityRule(Rule):
    """Identity, and dropout, which bounds treat as in eval mode."""

    exact_box = True
    elementwise = True

    def ibp(self, node: Node, boxes: list[Box], lt: LayerThreat | None) -> Box:
        return boxes[0]

    def backward(self, node: Node, a: Tensor, boxes: list[Box], lt: LayerThreat | None, ctx: Backward) -> Any:
        return [a], 0.0

    def backward_patches(self, node: Node, a: Any, boxes: list[Box], lt: LayerThreat | None, ctx: Backward) -> Any:
        return [a], 0.0


class ReshapeRule(Rule):
    """flatten / view / reshape: a permutation-free relabelling of each example's entries."""

    exact_box = True
    elementwise = True

    def ibp(self, node: Node, boxes: list[Box], lt: LayerThreat | None) -> Box:
        lb, ub = boxes[0]
        return lb.reshape(lb.shape[0], *node.shape), ub.reshape(ub.shape[0], *node.shape)

    def backward(self, node: Node, a: Tensor, boxes: list[Box], lt: LayerThreat | None, ctx: Backward) -> Any:
        return [a.reshape(*a.shape[:2], *boxes[0][0].shape[1:])], 0.0


def _operands(node: Node) -> tuple[Any, Any]:
    if node.kwargs.get("alpha", 1) != 1:
        raise UnsupportedLayerError(f"bounds do not support op '{node.name}' ({node.kind}) with alpha")
    if len(node.args) != 2:
        raise UnsupportedLayerError(f"op '{node.name}' ({node.kind}) needs two operands")
    return node.args[0], node.args[1]


def _const_sum(a: Tensor, const: Any) -> Tensor:
    """(B, S) sum of a * const, const a number or a tensor that broadcasts over one example's entries."""
    return (a * torch.as_tensor(const, dtype=a.dtype, device=a.device)).flatten(2).sum(dim=-1)


def _same_shape(node: Node, boxes: list[Box]) -> None:
    for lb, _ in boxes:
        if tuple(lb.shape[1:]) != node.shape:
            raise UnsupportedLayerError(
                f"bounds do not support broadcasting in op '{node.name}' ({node.kind}): operand shape "
                f"{tuple(lb.shape[1:])}, result {node.shape}"
            )


class AddRule(Rule):
    """x + y and x - y (residual connections; either operand may be a constant)."""

    def __init__(self, sign: float) -> None:
        self.sign = sign

    def ibp(self, node: Node, boxes: list[Box], lt: LayerThreat | None) -> Box:
        _same_shape(node, boxes)
        first, second = (boxes[v.index] if isinstance(v, Input) else (v, v) for v in _operands(node))
        if self.sign > 0:
            return first[0] + second[0], first[1] + second[1]
        return first[0] - second[1], first[1] - second[0]

    def backward(self, node: Node, a: Tensor, boxes: list[Box], lt: LayerThreat | None, ctx: Backward) -> Any:
        out: list[Tensor | None] = [None] * len(node.inputs)
        c: Tensor | float = 0.0
        for k, v in enumerate(_operands(node)):
            coef = a if k == 0 or self.sign > 0 else -a
            if isinstance(v, Input):
                prev = out[v.index]
                out[v.index] = coef if prev is None else prev + coef
            else:
                c = c + _const_sum(coef, v)
        return out, c

    def backward_patches(self, node: Node, a: Any, boxes: list[Box], lt: LayerThreat | None, ctx: Backward) -> Any:
        if not all(isinstance(v, Input) for v in _operands(node)):
            return None  # a constant operand's term needs the dense coefficients
        return self.backward(node, a, boxes, lt, ctx)


class ScaleRule(Rule):
    """x * k, k * x, x / k and -x for a constant k (a number or a tensor without a batch dimension)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def factor(self, node: Node) -> tuple[int, Any]:
        """(index of the tensor operand, the constant it is multiplied by)."""
        if self.kind == "neg":
            return 0, -1.0
        first, second = node.args[0], node.args[1]
        if isinstance(first, Input) and isinstance(second, Input):
            raise UnsupportedLayerError(
                f"bounds do not support the product of two tensors the threat moves (op '{node.name}', {node.kind})"
            )
        if self.kind == "div":
            if not isinstance(first, Input):
                raise UnsupportedLayerError(f"bounds do not support division by a tensor (op '{node.name}')")
            return first.index, 1.0 / second
        return (first.index, second) if isinstance(first, Input) else (second.index, first)

    def ibp(self, node: Node, boxes: list[Box], lt: LayerThreat | None) -> Box:
        index, k = self.factor(node)
        lb, ub = boxes[index]
        lo, hi = lb * k, ub * k
        return torch.minimum(lo, hi), torch.maximum(lo, hi)

    def backward(self, node: Node, a: Tensor, boxes: list[Box], lt: LayerThreat | None, ctx: Backward) -> Any:
        index, k = self.factor(node)
        out: list[Tensor | None] = [None] * len(node.inputs)
        out[index] = a * k
        return out, 0.0


class CatRule(Rule):
    """torch.cat along a non-batch dimension."""

    exact_box = True

    def dim(self, node: Node) -> int:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        dim = dim % (len(node.shape) + 1)
        if dim == 0:
            raise UnsupportedLayerError(f"bounds cannot follow op '{node.name}': it concatenates along the batch")
        for v in node.args[0]:
            if not isinstance(v, Input):
                raise UnsupportedLayerError(f"bounds need every tensor of cat '{node.name}' to depend on the input")
        return int(dim)

    def ibp(self, node: Node, boxes: list[Box], lt: LayerThreat | None) -> Box:
        dim = self.dim(node)
        parts = [boxes[v.index] for v in node.args[0]]
        return torch.cat([p[0] for p in parts], dim), torch.cat([p[1] for p in parts], dim)

    def backward(self, node: Node, a: Tensor, boxes: list[Box], lt: LayerThreat | None, ctx: Backward) -> Any:
        dim = self.dim(node)
        sizes = [boxes[v.index][0].shape[dim] for v in node.args[0]]
        out: list[Tensor | None] = [None] * len(node.inputs)
        for v, part in zip(node.args[0], torch.split(a, sizes, dim=dim + 1), strict=True):
            prev = out[v.index]
            out[v.index] = part if prev is None else prev + part
        return out, 0.0


class PoolRule(Rule):
    """Average pooling (fixed, adaptive): linear with non-negative coefficients."""

    def ibp(self, node: Node, boxes: list[Box], lt: LayerThreat | None) -> Box:
        lb, ub = boxes[0]
        return call(node, [lb]), call(node, [ub])

    def _as_conv(self, node: Node, channels: int, like: Tensor) -> tuple[Any, Tensor] | None:
        """(convolution parameters, depthwise kernel 1 / (kh kw)) when the pool is that convolution, else None."""
        m = node.module
        if not (
            type(m) is nn.AvgPool2d
            and not m.ceil_mode
            and m.divisor_override is None
            and (m.count_include_pad or nn.modules.utils._pair(m.padding) == (0, 0))
        ):
            return None  # windows whose divisor varies, adaptive or functional pools
        kernel = nn.modules.utils._pair(m.kernel_size)
        conv = SimpleNamespace(
            stride=nn.modules.utils._pair(m.stride if m.stride is not None else m.kernel_size),
            padding=nn.modules.utils._pair(m.padding),
            groups=channels,
            dilation=(1, 1),
        )
        return conv, like.new_full((channels, 1, *kernel), 1.0 / math.prod(kernel))

    def backward(self, node: Node, a: Tensor, boxes: list[Box], lt: LayerThreat | None, ctx: Backward) -> Any:
        in_shape = tuple(boxes[0][0].shape[1:])
        b, s = a.shape[:2]
        flat = a.reshape(b * s, *node.shape)
        conv = self._as_conv(node, in_shape[0], a)
        if conv is not None:  # the depthwise convolution's adjoint, without autograd
            return [conv_adjoint(conv[0], flat, conv[1], in_shape).reshape(b, s, *in_shape)], 0.0
        zero = a.new_zeros((b * s, *in_shape))
        pull = torch.func.vjp(lambda h: call(node, [h]), zero)[1]
        return [pull(flat)[0].reshape(b, s, *in_shape)], 0.0

    def backward_patches(self, node: Node, a: Any, boxes: list[Box], lt: LayerThreat | None, ctx: Backward) -> Any:
        conv = self._as_conv(node, boxes[0][0].shape[1], a.values)
        if conv is None:
            return None
        return [conv_patches(conv[0], a, conv[1], tuple(boxes[0][0].shape[1:]))], 0.0


_IDENTITY, _RESHAPE, _POOL = IdentityRule(), ReshapeRule(), PoolRule()
_op: Any
for _op in (nn.Identity, nn.Dropout, F.dropout, "Tensor.contiguous", "Tensor.clone"):
    register_rule(_op, _IDENTITY)
for _op in (nn.Flatten, torch.flatten, "Tensor.flatten", "Tensor.view", "Tensor.reshape", torch.reshape):
    register_rule(_op, _RESHAPE)
for _op in (operator.add, operator.iadd, torch.add, "Tensor.add", "Tensor.__add__"):
    register_rule(_op, AddRule(1.0))
for _op in (operator.sub, torch.sub, "Tensor.sub"):
    register_rule(_op, AddRule(-1.0))
for _op in (operator.mul, torch.mul, "Tensor.mul"):
    register_rule(_op, ScaleRule("mul"))
for _op in (operator.truediv, torch.div, "Tensor.div"):
    register_rule(_op, ScaleRule("div"))
for _op in (operator.neg, torch.neg, "Tensor.neg"):
    register_rule(_op, ScaleRule("neg"))
for _op in (torch.cat, torch.concat):
    register_rule(_op, CatRule())
for _op in (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
):
    register_rule(_op, _POOL)
