"""Ops evaluated at import: Constant, Shape (of a value whose shape is fixed), Gather and Cast on constants.

An exporter's `x.view(x.size(0), -1)` reads the shape at run time; here every shape is fixed (one example's), so
these ops fold to constants and the Reshape that consumes them sees a constant target. On a model value Gather
is refused and Cast is accepted only to float32 (a no-op on the float32 values).
"""

from __future__ import annotations

import numpy as np
import onnx

from ..context import NodeContext
from ..registry import converter
from .common import MAX_OPSET, MIN_OPSET, ints

__all__: list[str] = []

_CASTS: dict[int, type[np.generic]] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
}


@converter("Constant", since=MIN_OPSET, until=MAX_OPSET)
def constant(ctx: NodeContext) -> None:
    a = ctx.attrs("value", "value_float", "value_floats", "value_int", "value_ints")
    if len(a) != 1:
        raise ctx.error(f"exactly one value attribute is needed, got {sorted(a)}")
    ((key, value),) = a.items()
    if key == "value":
        array = value
    elif key.startswith("value_float"):
        array = np.asarray(value, dtype=np.float32)
    else:
        array = np.asarray(ints(ctx, value if isinstance(value, list) else [value], key, high=2**62), dtype=np.int64)
        array = array.reshape(()) if key == "value_int" else array
    ctx.set_const(np.asarray(array))


@converter("Shape", since=MIN_OPSET, until=MAX_OPSET)
def shape(ctx: NodeContext) -> None:
    a = ctx.attrs("start", "end")
    dims = list(ctx.shape(0))
    start, end = a.get("start", 0), a.get("end", len(dims))
    ctx.set_const(np.asarray(dims[start:end], dtype=np.int64))


@converter("Gather", since=MIN_OPSET, until=MAX_OPSET)
def gather(ctx: NodeContext) -> None:
    a = ctx.attrs("axis")
    data = ctx.const(0, "data")
    indices = ctx.const(1, "indices")
    if indices.dtype not in (np.int64, np.int32):
        raise ctx.error(f"indices have dtype {indices.dtype}")
    axis = ints(ctx, [a.get("axis", 0)], "axis")[0]
    if data.ndim == 0 or not -data.ndim <= axis < data.ndim:
        raise ctx.error(f"axis {axis} out of range for rank {data.ndim}")
    size = data.shape[axis]
    if ((indices < -size) | (indices >= size)).any():
        raise ctx.error(f"indices out of range for a dimension of {size}")
    ctx.check_const_size(tuple(indices.shape) + tuple(data.shape[:axis]) + tuple(data.shape[axis + 1 :]))
    ctx.set_const(np.take(data, indices, axis=axis))


@converter("Cast", since=MIN_OPSET, until=MAX_OPSET)
def cast(ctx: NodeContext) -> None:
    a = ctx.attrs("to", "saturate")
    to = _CASTS.get(int(a.get("to", 0)))
    if to is None:
        raise ctx.error(f"cast to data type {a.get('to')} is not supported (float32, int64, int32)")
    if ctx.is_const(0):
        ctx.set_const(ctx.const(0).astype(to))
    elif to is np.float32:
        ctx.alias(ctx.tensor(0))
    else:
        raise ctx.error("casting the model's values to integers is not supported")
