"""Element-wise activations: nn.ReLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.Hardtanh (Clip) and negation (the
bounds support ReLU and negation; attacks run on all of them)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..context import NodeContext
from ..layers import ConstantOp
from ..registry import converter
from .common import MAX_OPSET, MIN_OPSET, node_hint

__all__: list[str] = []


@converter("Relu", since=MIN_OPSET, until=MAX_OPSET)
def relu(ctx: NodeContext) -> None:
    ctx.attrs()
    ctx.emit(nn.ReLU(), [ctx.tensor(0)], node_hint(ctx))


@converter("Sigmoid", since=MIN_OPSET, until=MAX_OPSET)
def sigmoid(ctx: NodeContext) -> None:
    ctx.attrs()
    ctx.emit(nn.Sigmoid(), [ctx.tensor(0)], node_hint(ctx))


@converter("Tanh", since=MIN_OPSET, until=MAX_OPSET)
def tanh(ctx: NodeContext) -> None:
    ctx.attrs()
    ctx.emit(nn.Tanh(), [ctx.tensor(0)], node_hint(ctx))


@converter("LeakyRelu", since=MIN_OPSET, until=MAX_OPSET)
def leaky_relu(ctx: NodeContext) -> None:
    a = ctx.attrs("alpha")
    ctx.emit(nn.LeakyReLU(float(a.get("alpha", 0.01))), [ctx.tensor(0)], node_hint(ctx))


@converter("Clip", since=MIN_OPSET, until=MAX_OPSET)
def clip(ctx: NodeContext) -> None:
    """Clip to [min, max] (attributes before opset 11, constant inputs after): nn.ReLU for [0, +inf) (what
    exporters write for relu), else nn.Hardtanh (ReLU6 is [0, 6])."""
    a = ctx.attrs(*(("min", "max") if ctx.opset < 11 else ()))
    x = ctx.tensor(0)
    low, high = float(a.get("min", -math.inf)), float(a.get("max", math.inf))
    if ctx.opset >= 11:
        low = float(ctx.const(1, "min").reshape(-1)[0]) if ctx.input(1) else -math.inf
        high = float(ctx.const(2, "max").reshape(-1)[0]) if ctx.input(2) else math.inf
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ctx.error(f"min {low} / max {high} do not make an interval")
    if low == 0.0 and high == math.inf:
        ctx.emit(nn.ReLU(), [x], node_hint(ctx))
    else:
        ctx.emit(nn.Hardtanh(low, high), [x], node_hint(ctx))


@converter("Neg", since=MIN_OPSET, until=MAX_OPSET)
def neg(ctx: NodeContext) -> None:
    ctx.attrs()
    ctx.emit(ConstantOp("mul", torch.tensor(-1.0)), [ctx.tensor(0)], node_hint(ctx))
