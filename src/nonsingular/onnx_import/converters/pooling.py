"""AveragePool, MaxPool and GlobalAveragePool as nn pooling modules (explicit padding in front where PyTorch's
own padding cannot express the ONNX one)."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..context import NodeContext
from ..layers import ConstantPad
from ..registry import converter
from .common import MAX_OPSET, ints, node_hint
from .conv import torch_pads, window_geometry

__all__: list[str] = []


def _out_size(size: int, b: int, e: int, k: int, s: int, d: int, ceil: bool) -> int:
    span = size + b + e - d * (k - 1) - 1
    return (math.ceil(span / s) if ceil else span // s) + 1


def _pool(ctx: NodeContext, kind: str) -> None:
    known = ["auto_pad", "ceil_mode", "kernel_shape", "pads", "strides", "dilations"]
    known += ["count_include_pad"] if kind == "avg" else ["storage_order"]
    a = ctx.attrs(*known)
    ctx.check_unused_outputs(1)
    x = ctx.tensor(0)
    shape = ctx.shape(0)
    n = len(shape) - 2
    if n not in (1, 2):
        raise ctx.error(f"input {list(shape)}: only 1-D and 2-D pooling is supported")
    if "kernel_shape" not in a:
        raise ctx.error("kernel_shape is required")
    kernel = ints(ctx, a["kernel_shape"], "kernel_shape", low=1)
    strides, dilations, begin, end = window_geometry(ctx, a, shape[2:], kernel)
    ceil = bool(a.get("ceil_mode", 0))
    if kind == "avg" and any(d != 1 for d in dilations):
        raise ctx.error(f"dilations {dilations} in average pooling are not supported")
    onnx_out = [
        _out_size(size, b, e, k, s, d, ceil)
        for size, b, e, k, s, d in zip(shape[2:], begin, end, kernel, strides, dilations, strict=True)
    ]
    if min(onnx_out) < 1:
        raise ctx.error(f"the window {kernel} does not fit the padded input {list(shape)}")
    ctx.check_size((1, shape[1], *onnx_out))
    include_pad = bool(a.get("count_include_pad", 0))
    # PyTorch pads symmetrically and at most half a window; anything else is an explicit pad (zeros for an
    # average that counts padding, -inf for a max, which never selects it).
    inline = begin == end and all(b <= (d * (k - 1) + 1) // 2 for b, k, d in zip(begin, kernel, dilations, strict=True))
    hint = node_hint(ctx)
    spatial = tuple(shape[2:]) if inline else tuple(s + p + q for s, p, q in zip(shape[2:], begin, end, strict=True))
    if not inline:
        if kind == "avg" and not include_pad:
            raise ctx.error(f"pads {begin + end} with count_include_pad=0 are not supported (asymmetric or too large)")
        value = 0.0 if kind == "avg" else -math.inf
        x = ctx.emit(ConstantPad(torch_pads(begin, end), value), [x], f"{hint}_pad", output=f"{ctx.output}::pad")
        begin = [0] * n
    # With ceil_mode PyTorch drops a last window that starts in the right padding; refuse where that makes
    # its output size differ from ONNX's rather than return other values.
    for size, b, k, s, d, want in zip(spatial, begin, kernel, strides, dilations, onnx_out, strict=True):
        got = _out_size(size, b, b, k, s, d, ceil)
        if ceil and (got - 1) * s >= size + b:
            got -= 1
        if got != want:
            raise ctx.error("ceil_mode=1 here makes a window start in the padding, where PyTorch and ONNX differ")
    geometry: dict[str, Any] = {"kernel_size": tuple(kernel), "stride": tuple(strides), "padding": tuple(begin)}
    if kind == "max":
        cls_max = nn.MaxPool1d if n == 1 else nn.MaxPool2d
        module: nn.Module = cls_max(dilation=tuple(dilations), ceil_mode=ceil, **geometry)
    else:
        cls_avg = nn.AvgPool1d if n == 1 else nn.AvgPool2d
        module = cls_avg(ceil_mode=ceil, count_include_pad=include_pad, **geometry)
    ctx.emit(module, [x], hint)


@converter("MaxPool", since=9, until=MAX_OPSET)
def max_pool(ctx: NodeContext) -> None:
    _pool(ctx, "max")


@converter("AveragePool", since=9, until=MAX_OPSET)
def average_pool(ctx: NodeContext) -> None:
    _pool(ctx, "avg")


@converter("GlobalAveragePool", since=9, until=MAX_OPSET)
def global_average_pool(ctx: NodeContext) -> None:
    ctx.attrs()
    x = ctx.tensor(0)
    n = len(ctx.shape(0)) - 2
    if n not in (1, 2):
        raise ctx.error(f"input {list(ctx.shape(0))}: only 1-D and 2-D pooling is supported")
    ctx.emit(nn.AdaptiveAvgPool1d(1) if n == 1 else nn.AdaptiveAvgPool2d(1), [x], node_hint(ctx))
