"""Add, Sub, Mul, Div: of two model values (a residual connection), of a value and a constant (input
normalisation: Sub then Div by per-channel constants becomes the project's Normalize), or of two constants
(folded at import)."""

from __future__ import annotations

import numpy as np

from nonsingular.models import Normalize

from ..context import NodeContext
from ..layers import Binary, ConstantOp
from ..registry import converter
from .common import MAX_OPSET, MIN_OPSET, float_tensor, node_hint

__all__: list[str] = []

_NUMPY = {"add": np.add, "sub": np.subtract, "mul": np.multiply}


def _fold(ctx: NodeContext, op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype != b.dtype:
        raise ctx.error(f"operands of types {a.dtype} and {b.dtype}")
    shape = ctx.broadcast(tuple(a.shape), tuple(b.shape))
    ctx.check_const_size(shape)
    if op != "div":
        return np.asarray(_NUMPY[op](a, b), dtype=a.dtype)
    if a.dtype == np.float32:
        return np.asarray(a / b, dtype=np.float32)
    if (b == 0).any():
        raise ctx.error("integer division by zero")
    return np.asarray(np.trunc(a / b), dtype=a.dtype)  # ONNX integer division truncates


def _per_channel(c: np.ndarray, rank: int) -> np.ndarray | None:
    """`c`'s values when it broadcasts against a rank-`rank` value as a scalar or along dimension 1 only."""
    if c.ndim > rank:
        return None
    padded = (1,) * (rank - c.ndim) + tuple(c.shape)
    if any(d != 1 for k, d in enumerate(padded) if k != 1):
        return None
    return c.reshape(-1)


def _normalize(ctx: NodeContext, x: str) -> bool:
    """Sub(x, mean) read only by Div(., std): emit Normalize(mean, std) and absorb the Div; False if not that."""
    div = ctx.sole_consumer()
    if div is None or div.op_type != "Div" or div.domain not in ("", "ai.onnx") or div.input[0] != ctx.output:
        return False
    std_c = ctx.conv.constants.get(div.input[1])
    mean_c = ctx.conv.constants.get(ctx.input(1))
    if std_c is None or mean_c is None or std_c.dtype != np.float32 or mean_c.dtype != np.float32:
        return False
    rank = len(ctx.shape(0))
    mean, std = _per_channel(mean_c, rank), _per_channel(std_c, rank)
    channels = ctx.shape(0)[1] if rank > 1 else 1
    if mean is None or std is None or not (std > 0).all() or {mean.size, std.size} - {1, channels}:
        return False
    ctx.absorb(div)
    ctx.emit(Normalize(mean.tolist(), std.tolist()), [x], node_hint(ctx), output=div.output[0])
    return True


def _arith(ctx: NodeContext, op: str) -> None:
    ctx.attrs()
    if ctx.is_const(0) and ctx.is_const(1):
        ctx.set_const(_fold(ctx, op, ctx.const(0), ctx.const(1)))
        return
    out_shape = ctx.broadcast(ctx.shape(0), ctx.shape(1))
    ctx.check_size(out_shape)
    if not ctx.is_const(0) and not ctx.is_const(1):
        if len(ctx.shape(0)) != len(ctx.shape(1)):
            raise ctx.error(f"operands of shapes {list(ctx.shape(0))} and {list(ctx.shape(1))} have different ranks")
        ctx.emit(Binary(op), [ctx.tensor(0), ctx.tensor(1)], node_hint(ctx))
        return
    k = 0 if ctx.is_const(1) else 1  # the operand that depends on the model's input
    x, c = ctx.tensor(k), ctx.const(1 - k)
    rank = len(ctx.shape(k))
    if c.ndim > rank or (c.ndim == rank and c.shape[0] != 1):
        raise ctx.error(f"the constant of shape {list(c.shape)} would broadcast over the batch dimension")
    if op == "sub" and k == 0 and _normalize(ctx, x):
        return
    c_t = float_tensor(ctx, c, "the constant operand")
    ctx.emit(ConstantOp(op if k == 0 or op in ("add", "mul") else f"r{op}", c_t), [x], node_hint(ctx))


@converter("Add", since=MIN_OPSET, until=MAX_OPSET)
def add(ctx: NodeContext) -> None:
    _arith(ctx, "add")


@converter("Sub", since=MIN_OPSET, until=MAX_OPSET)
def sub(ctx: NodeContext) -> None:
    _arith(ctx, "sub")


@converter("Mul", since=MIN_OPSET, until=MAX_OPSET)
def mul(ctx: NodeContext) -> None:
    _arith(ctx, "mul")


@converter("Div", since=MIN_OPSET, until=MAX_OPSET)
def div(ctx: NodeContext) -> None:
    _arith(ctx, "div")
