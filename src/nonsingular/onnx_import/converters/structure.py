"""Ops that only move entries: Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Concat, Identity, Dropout.

On a model value they become a `Reshape` that keeps the batch dimension (or nn.Flatten, or a `Permute` /
`Concat` after it); on constants they are folded at import (the Shape -> Gather -> Unsqueeze -> Concat ->
Reshape chain that exporters write for `x.view(x.size(0), -1)` folds to one constant shape).
"""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from ..context import NodeContext
from ..layers import Concat, ConstantPad, Permute, Reshape
from ..registry import converter
from .common import MAX_OPSET, MIN_OPSET, ints, node_hint
from .conv import torch_pads

__all__: list[str] = []


def _reshape_to(ctx: NodeContext, out_shape: tuple[int, ...]) -> None:
    """The node's output is its input 0 with the entries in the same order and `out_shape` (one example)."""
    if ctx.is_const(0):
        ctx.set_const(ctx.const(0).reshape(out_shape))
        return
    x = ctx.tensor(0)
    if not out_shape or out_shape[0] != 1:
        raise ctx.error(f"the result {list(out_shape)} does not keep a leading batch dimension of 1")
    if out_shape == ctx.shape(0):
        ctx.alias(x)
    elif len(out_shape) == 2 and len(ctx.shape(0)) > 2:
        ctx.emit(nn.Flatten(), [x], node_hint(ctx))
    else:
        ctx.emit(Reshape(out_shape[1:]), [x], node_hint(ctx))


def _axes(ctx: NodeContext, attrs: dict[str, object], rank: int, what: str = "axes") -> list[int] | None:
    """Axes from the attribute (opset < 13) or input 1 (opset >= 13), made non-negative; None when absent."""
    raw: object = attrs.get("axes")
    if ctx.opset >= 13 and ctx.input(1):
        raw = ctx.const(1, what)
    if raw is None:
        return None
    axes = ints(ctx, raw, what)
    if ctx.opset < 11 and min(axes, default=0) < 0:
        raise ctx.error(f"negative {what} {axes} are defined from opset 11 only")
    axes = [a + rank if a < 0 else a for a in axes]
    if any(not 0 <= a < rank for a in axes) or len(set(axes)) != len(axes):
        raise ctx.error(f"{what} {axes} out of range for rank {rank}")
    return axes


@converter("Flatten", since=MIN_OPSET, until=MAX_OPSET)
def flatten(ctx: NodeContext) -> None:
    a = ctx.attrs("axis")
    shape = ctx.shape(0)
    axis = ints(ctx, [a.get("axis", 1)], "axis")[0]
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis <= len(shape):
        raise ctx.error(f"axis {axis} out of range for rank {len(shape)}")
    _reshape_to(ctx, (math.prod(shape[:axis]), math.prod(shape[axis:])))


@converter("Reshape", since=MIN_OPSET, until=MAX_OPSET)
def reshape(ctx: NodeContext) -> None:
    a = ctx.attrs("allowzero")
    shape = ctx.shape(0)
    target = ints(ctx, ctx.const(1, "shape"), "shape", low=-1, high=2**31)
    out = [shape[k] if t == 0 and not a.get("allowzero", 0) and k < len(shape) else t for k, t in enumerate(target)]
    if out.count(-1) > 1:
        raise ctx.error(f"shape {target} has more than one -1")
    total, known = math.prod(shape), math.prod(t for t in out if t != -1)
    if -1 in out:
        if known == 0 or total % known:
            raise ctx.error(f"cannot reshape {list(shape)} to {target}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise ctx.error(f"cannot reshape {list(shape)} to {target}")
    _reshape_to(ctx, tuple(out))


@converter("Squeeze", since=MIN_OPSET, until=MAX_OPSET)
def squeeze(ctx: NodeContext) -> None:
    a = ctx.attrs(*(("axes",) if ctx.opset < 13 else ()))
    shape = ctx.shape(0)
    axes = _axes(ctx, a, len(shape))
    if axes is None:
        axes = [k for k, d in enumerate(shape) if d == 1]
    if any(shape[k] != 1 for k in axes):
        raise ctx.error(f"cannot squeeze axes {axes} of shape {list(shape)}")
    _reshape_to(ctx, tuple(d for k, d in enumerate(shape) if k not in axes))


@converter("Unsqueeze", since=MIN_OPSET, until=MAX_OPSET)
def unsqueeze(ctx: NodeContext) -> None:
    a = ctx.attrs(*(("axes",) if ctx.opset < 13 else ()))
    shape = ctx.shape(0)
    raw = ctx.const(1, "axes") if ctx.opset >= 13 and ctx.input(1) else a.get("axes")
    if raw is None:
        raise ctx.error("axes are required")
    axes = _axes(ctx, a, len(shape) + len(ints(ctx, raw, "axes"))) or []
    rest = iter(shape)
    _reshape_to(ctx, tuple(1 if k in axes else next(rest) for k in range(len(shape) + len(axes))))


@converter("Transpose", since=MIN_OPSET, until=MAX_OPSET)
def transpose(ctx: NodeContext) -> None:
    a = ctx.attrs("perm")
    shape = ctx.shape(0)
    perm = ints(ctx, a.get("perm", list(range(len(shape)))[::-1]), "perm")
    if sorted(perm) != list(range(len(shape))):
        raise ctx.error(f"perm {perm} is not a permutation of {len(shape)} axes")
    out = tuple(shape[p] for p in perm)
    if ctx.is_const(0):
        ctx.set_const(np.ascontiguousarray(ctx.const(0).transpose(perm)))
        return
    moved = [p for p in perm if shape[p] != 1]
    if moved == sorted(moved):  # only axes of size 1 move: the entries keep their order
        _reshape_to(ctx, out)
    elif perm[0] == 0:
        ctx.emit(Permute(perm[1:]), [ctx.tensor(0)], node_hint(ctx))
    else:
        raise ctx.error(f"perm {perm} moves the batch dimension")


@converter("Concat", since=MIN_OPSET, until=MAX_OPSET)
def concat(ctx: NodeContext) -> None:
    a = ctx.attrs("axis")
    n = len(ctx.node.input)
    shapes = [ctx.shape(k) for k in range(n)]
    rank = len(shapes[0])
    axis = ints(ctx, [a.get("axis", 0)], "axis")[0]
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank or any(len(s) != rank for s in shapes):
        raise ctx.error(f"axis {axis} / shapes {[list(s) for s in shapes]} do not concatenate")
    if all(ctx.is_const(k) for k in range(n)):
        ctx.check_const_size((*shapes[0][:axis], sum(s[axis] for s in shapes), *shapes[0][axis + 1 :]))
        ctx.set_const(np.concatenate([ctx.const(k) for k in range(n)], axis=axis))
        return
    if any(ctx.is_const(k) for k in range(n)):
        raise ctx.error("concatenating model values with constants is not supported")
    if axis == 0:
        raise ctx.error("concatenation along the batch dimension is not supported")
    ctx.emit(Concat(axis), [ctx.tensor(k) for k in range(n)], node_hint(ctx))


@converter("Identity", since=MIN_OPSET, until=MAX_OPSET)
def identity(ctx: NodeContext) -> None:
    ctx.attrs()
    ctx.alias(ctx.input(0))


@converter("Dropout", since=MIN_OPSET, until=MAX_OPSET)
def dropout(ctx: NodeContext) -> None:
    """Identity in inference (the mask output must be unused; training_mode, from opset 12, must be false)."""
    ctx.attrs("ratio", "seed", "is_test")
    ctx.check_unused_outputs(1)
    if ctx.input(2) and bool(ctx.const(2, "training_mode").reshape(-1)[0]):
        raise ctx.error("training_mode=true is not supported")
    ctx.alias(ctx.input(0))


@converter("Pad", since=MIN_OPSET, until=MAX_OPSET)
def pad(ctx: NodeContext) -> None:
    """Constant padding of the dimensions after the batch dimension (pads from the attribute before opset 11, from
    input 1 after; the value from the attribute or input 2; opset 18's axes input from input 3)."""
    a = ctx.attrs(*(("mode", "pads", "value") if ctx.opset < 11 else ("mode",)))
    if str(a.get("mode", "constant")) != "constant":
        raise ctx.error(f"mode {a.get('mode')!r} is not supported (constant only)")
    shape = ctx.shape(0)
    rank = len(shape)
    raw = ctx.const(1, "pads") if ctx.opset >= 11 else a.get("pads")
    pads = ints(ctx, raw if raw is not None else [], "pads", low=0)
    axes = list(range(rank))
    if ctx.input(3):
        axes = [k + rank if k < 0 else k for k in ints(ctx, ctx.const(3, "axes"), "axes")]
    if len(pads) != 2 * len(axes) or any(not 0 <= k < rank for k in axes):
        raise ctx.error(f"pads {pads} do not fit axes {axes} of rank {rank}")
    begin, end = [0] * rank, [0] * rank
    for j, k in enumerate(axes):
        begin[k], end[k] = pads[j], pads[len(axes) + j]
    value = float(a.get("value", 0.0))
    if ctx.input(2):
        value = float(ctx.const(2, "constant_value").reshape(-1)[0])
    if begin[0] or end[0]:
        raise ctx.error("padding the batch dimension is not supported")
    if not any(begin) and not any(end):
        ctx.alias(ctx.tensor(0))
        return
    ctx.check_size(tuple(s + b + e for s, b, e in zip(shape, begin, end, strict=True)))
    ctx.emit(ConstantPad(torch_pads(begin[1:], end[1:]), value), [ctx.tensor(0)], node_hint(ctx))
