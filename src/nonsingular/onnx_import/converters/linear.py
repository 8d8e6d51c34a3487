"""Gemm and MatMul by a constant: nn.Linear, holding the ONNX weights (a MatMul followed by the Add of a constant
becomes one Linear with that bias, so weight threats see the layer as exported)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..context import NodeContext
from ..layers import Permute, Reshape
from ..registry import converter
from .common import MAX_OPSET, MIN_OPSET, float_tensor, layer_hint

__all__: list[str] = []


def _linear(ctx: NodeContext, weight: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    """nn.Linear with `weight` (M, K) and `bias` (M,) or none."""
    m, k = weight.shape
    lin = nn.Linear(int(k), int(m), bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(float_tensor(ctx, weight, "the weight"))
        if bias is not None and lin.bias is not None:
            lin.bias.copy_(float_tensor(ctx, bias, "the bias"))
    return lin


def _as_bias(c: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray | None:
    """`c` as a (M,) bias when adding it to an output of `out_shape` adds the same vector to every row, else None."""
    m = out_shape[-1]
    if c.ndim > len(out_shape) or any(d != 1 for d in c.shape[:-1]) or (c.ndim and c.shape[-1] not in (1, m)):
        return None
    return np.ascontiguousarray(np.broadcast_to(c.reshape(-1)[:m] if c.size else c, (m,)), dtype=c.dtype)


@converter("Gemm", since=MIN_OPSET, until=MAX_OPSET)
def gemm(ctx: NodeContext) -> None:
    """Y = alpha * A' B' + beta * C with A the model's values (N, K), B and C constants."""
    a = ctx.attrs("alpha", "beta", "transA", "transB")
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    x = ctx.tensor(0)
    if a.get("transA", 0):
        raise ctx.error("transA=1 on the model's values is not supported (it would transpose the batch)")
    b = ctx.const(1, "B")
    if b.ndim != 2 or len(ctx.shape(0)) != 2:
        raise ctx.error(f"A {list(ctx.shape(0))} and B {list(b.shape)} must both be matrices")
    weight = b if a.get("transB", 0) else b.T
    if weight.shape[1] != ctx.shape(0)[1]:
        raise ctx.error(f"A {list(ctx.shape(0))} and B {list(b.shape)} do not multiply")
    weight = (weight * np.float32(alpha)) if alpha != 1.0 else weight
    bias = None
    if ctx.input(2):
        c = ctx.const(2, "C")
        bias = _as_bias(c, (1, weight.shape[0]))
        if bias is None:
            raise ctx.error(f"C of shape {list(c.shape)} does not broadcast as a bias over {weight.shape[0]} outputs")
        bias = (bias * np.float32(beta)) if beta != 1.0 else bias
    lin = _linear(ctx, np.ascontiguousarray(weight), bias)
    ctx.record(lin, "weight", ctx.input(1), transpose=not a.get("transB", 0), scale=alpha)
    if ctx.input(2) and ctx.const(2).size == weight.shape[0]:  # a broadcast scalar is not one bias per output
        ctx.record(lin, "bias", ctx.input(2), scale=beta)
    ctx.emit(lin, [x], layer_hint(ctx))


def _fused_bias(ctx: NodeContext, out_shape: tuple[int, ...]) -> tuple[np.ndarray | None, str, str]:
    """(bias, its constant's name, output name): the bias of an Add of a constant that alone reads this MatMul's
    output (the Add is then absorbed, and the Linear writes the Add's output), else (None, '', the MatMul's
    output)."""
    add = ctx.sole_consumer()
    if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.attribute):
        return None, "", ctx.output
    name = ctx.other_input(add, ctx.output)
    c = ctx.conv.constants.get(name)
    if c is None or c.dtype != np.float32:
        return None, "", ctx.output
    bias = _as_bias(c, out_shape)
    if bias is None:
        return None, "", ctx.output
    ctx.absorb(add)
    return bias, (name if c.size == out_shape[-1] else ""), add.output[0]


@converter("MatMul", since=MIN_OPSET, until=MAX_OPSET)
def matmul(ctx: NodeContext) -> None:
    """x @ W (W a constant matrix) as a Linear; W @ x (x's last two dimensions (K, P)) as a Linear between
    reshapes (P = 1) or transposes."""
    ctx.attrs()
    if ctx.is_const(1) and not ctx.is_const(0):
        x, w = ctx.tensor(0), ctx.const(1, "B")
        shape = ctx.shape(0)
        if w.ndim != 2 or len(shape) < 2 or shape[-1] != w.shape[0]:
            raise ctx.error(f"A {list(shape)} @ B {list(w.shape)}: B must be a matrix matching A's last dimension")
        out_shape = (*shape[:-1], int(w.shape[1]))
        bias, bias_name, out = _fused_bias(ctx, out_shape)
        lin, hint = _linear(ctx, np.ascontiguousarray(w.T), bias), layer_hint(ctx, 1)
        ctx.record(lin, "weight", ctx.input(1), transpose=True)
        if bias_name:
            ctx.record(lin, "bias", bias_name)
        if len(shape) > 2 and all(d == 1 for d in shape[1:-1]):
            # (N, 1, ..., 1, K): a Linear between reshapes, which the bounds (Linear on (N, features)) follow
            x = ctx.emit(Reshape((shape[-1],)), [x], f"{hint}_in", output=f"{out}::in")
            x = ctx.emit(lin, [x], hint, output=f"{out}::lin")
            ctx.emit(Reshape(out_shape[1:]), [x], f"{hint}_out", output=out)
        else:
            ctx.emit(lin, [x], hint, output=out)
        return
    if ctx.is_const(0) and not ctx.is_const(1):
        w, x = ctx.const(0, "A"), ctx.tensor(1)
        shape = ctx.shape(1)
        if w.ndim != 2 or len(shape) < 3 or shape[-2] != w.shape[1]:
            raise ctx.error(
                f"A {list(w.shape)} @ B {list(shape)}: A must be a matrix and B have a batch dimension and (K, P) last"
            )
        hint, lin = layer_hint(ctx, 0), _linear(ctx, np.ascontiguousarray(w), None)
        ctx.record(lin, "weight", ctx.input(0))
        if shape[-1] == 1:
            mid = ctx.emit(Reshape(shape[1:-1]), [x], f"{hint}_in", output=f"{ctx.output}::in")
            mid = ctx.emit(lin, [mid], hint, output=f"{ctx.output}::lin")
            ctx.emit(Reshape((*shape[1:-2], int(w.shape[0]), 1)), [mid], f"{hint}_out")
        else:
            r = len(shape) - 1  # the example's dimensions are 1..r
            swap = [*range(1, r - 1), r, r - 1]
            mid = ctx.emit(Permute(swap), [x], f"{hint}_in", output=f"{ctx.output}::in")
            mid = ctx.emit(lin, [mid], hint, output=f"{ctx.output}::lin")
            ctx.emit(Permute(swap), [mid], f"{hint}_out")
        return
    raise ctx.error("MatMul needs exactly one constant operand (a product of two model values is not supported)")
