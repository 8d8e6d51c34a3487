"""AveragePool, MaxPool and GlobalAveragePool as nn pooling modules.

ONNX's output size (opsets 9-21, as onnxruntime computes it): floor or ceil of
(size + pad_begin + pad_end - dilation * (kernel - 1) - 1) / stride, plus 1, where with ceil_mode a last window
that starts in the end padding is dropped: PyTorch's own rule. Symmetric padding of at most half a kernel is
PyTorch's `padding`; anything else is an explicit pad in front of a floor-mode pool over exactly the windows
ONNX takes (-inf for a max, which never selects it; zeros for an average, divided afterwards by a constant
map of how many entries of each window ONNX counts).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..context import NodeContext
from ..layers import ConstantOp, ConstantPad
from ..registry import converter
from .common import MAX_OPSET, MIN_OPSET, ints, node_hint
from .conv import torch_pads, window_geometry

__all__: list[str] = []


def _out_size(size: int, b: int, e: int, k: int, s: int, d: int, ceil: bool) -> int:
    span = size + b + e - d * (k - 1) - 1
    out = (math.ceil(span / s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + b:
        out -= 1  # the last window would start in the end padding
    return out


def _counts(spatial: list[int], begin: list[int], end: list[int], extra: list[int], include_pad: bool) -> np.ndarray:
    """(*padded) 1 where an average counts an entry: the input, the declared pads if `include_pad`; not the
    `extra` end padding beyond the declared one (a ceil-mode window past it)."""
    mask = np.ones((), dtype=np.float32)
    for size, b, e, x in zip(spatial, begin, end, extra, strict=True):
        inner = min(e, x)
        line = np.asarray([float(include_pad)] * b + [1.0] * size + [float(include_pad)] * inner + [0.0] * (x - inner))
        mask = np.multiply.outer(mask, line.astype(np.float32))
    return mask


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
    same = str(a.get("auto_pad", "NOTSET")) not in ("NOTSET", "", "VALID")
    if same and ceil:
        # onnxruntime shifts the windows (negative pads) or fails here, depending on the opset
        raise ctx.error("auto_pad SAME with ceil_mode=1 is not supported (onnxruntime and ONNX disagree)")
    if any(d != 1 for d in dilations):
        if kind == "avg":
            raise ctx.error(f"dilations {dilations} in average pooling are not supported")
        if same:
            # onnxruntime sizes SAME padding without the dilation, the ONNX definition with it
            raise ctx.error("auto_pad SAME with dilations is not supported (onnxruntime and ONNX disagree)")
    spatial = list(shape[2:])
    if same and any(
        (math.ceil(size / st) - 1) * st + k - size < 0 for size, k, st in zip(spatial, kernel, strides, strict=True)
    ):
        # a stride longer than the window: ONNX's SAME padding is negative there (onnxruntime crops)
        raise ctx.error("auto_pad SAME with negative padding (stride > kernel) is not supported")
    geometry = list(zip(spatial, begin, end, kernel, strides, dilations, strict=True))
    out = [_out_size(size, b, e, k, s, d, ceil) for size, b, e, k, s, d in geometry]
    if min(out) < 1:
        raise ctx.error(f"the window {kernel} does not fit the padded input {list(shape)}")
    ctx.check_size((1, shape[1], *out))
    include_pad = bool(a.get("count_include_pad", 0))
    hint = node_hint(ctx)
    options: dict[str, Any] = {"kernel_size": tuple(kernel), "stride": tuple(strides)}
    if begin == end and all(2 * b <= k for b, k in zip(begin, kernel, strict=True)):
        # PyTorch's own padding: the same windows and, for averages, the same divisors
        options["padding"] = tuple(begin)
        if kind == "max":
            cls_max = nn.MaxPool1d if n == 1 else nn.MaxPool2d
            ctx.emit(cls_max(dilation=tuple(dilations), ceil_mode=ceil, **options), [x], hint)
        else:
            cls_avg = nn.AvgPool1d if n == 1 else nn.AvgPool2d
            ctx.emit(cls_avg(ceil_mode=ceil, count_include_pad=include_pad, **options), [x], hint)
        return
    # explicit padding to exactly the extent the last window reaches (cropping nothing: a floor-mode pool over
    # a longer input takes the same windows when the excess is shorter than a stride)
    extra = [
        max(0, (o - 1) * s + d * (k - 1) + 1 - size - b) for o, (size, b, _, k, s, d) in zip(out, geometry, strict=True)
    ]
    padded = (1, shape[1], *(size + b + x_ for size, b, x_ in zip(spatial, begin, extra, strict=True)))
    ctx.check_size(padded, "padded")
    if any(begin) or any(extra):
        value = -math.inf if kind == "max" else 0.0
        x = ctx.emit(ConstantPad(torch_pads(begin, extra), value), [x], f"{hint}_pad", output=f"{ctx.output}::pad")
    if kind == "max":
        cls_max = nn.MaxPool1d if n == 1 else nn.MaxPool2d
        ctx.emit(cls_max(dilation=tuple(dilations), **options), [x], hint)
        return
    cls_avg = nn.AvgPool1d if n == 1 else nn.AvgPool2d
    mask = torch.from_numpy(_counts(spatial, begin, end, extra, include_pad))[None, None]
    share = (F.avg_pool1d if n == 1 else F.avg_pool2d)(mask, tuple(kernel), tuple(strides))[0]  # (1, *out)
    if not bool((share > 0).all()):
        raise ctx.error(f"pads {begin + end} make a window hold only padding")
    if bool((share == 1).all()):
        ctx.emit(cls_avg(**options), [x], hint)
        return
    x = ctx.emit(cls_avg(**options), [x], hint, output=f"{ctx.output}::sum")
    ctx.emit(ConstantOp("div", share), [x], f"{hint}_count")


@converter("MaxPool", since=MIN_OPSET, until=MAX_OPSET)
def max_pool(ctx: NodeContext) -> None:
    _pool(ctx, "max")


@converter("AveragePool", since=MIN_OPSET, until=MAX_OPSET)
def average_pool(ctx: NodeContext) -> None:
    _pool(ctx, "avg")


@converter("GlobalAveragePool", since=MIN_OPSET, until=MAX_OPSET)
def global_average_pool(ctx: NodeContext) -> None:
    ctx.attrs()
    x = ctx.tensor(0)
    n = len(ctx.shape(0)) - 2
    if n not in (1, 2):
        raise ctx.error(f"input {list(ctx.shape(0))}: only 1-D and 2-D pooling is supported")
    ctx.emit(nn.AdaptiveAvgPool1d(1) if n == 1 else nn.AdaptiveAvgPool2d(1), [x], node_hint(ctx))
