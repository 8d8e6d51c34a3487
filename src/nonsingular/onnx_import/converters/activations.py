"""Element-wise activations: nn.ReLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU (the bounds support ReLU; attacks run on
all of them)."""

from __future__ import annotations

from torch import nn

from ..context import NodeContext
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
