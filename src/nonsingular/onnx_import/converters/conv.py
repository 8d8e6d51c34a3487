"""Conv: nn.Conv1d / nn.Conv2d holding the ONNX kernel and bias; asymmetric or SAME padding becomes an explicit
zero pad in front of the convolution."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..context import NodeContext
from ..layers import ConstantPad
from ..registry import converter
from .common import MAX_OPSET, MIN_OPSET, float_tensor, ints, layer_hint

__all__ = ["spatial_pads", "torch_pads", "window_geometry"]


def spatial_pads(
    ctx: NodeContext,
    attrs: dict[str, object],
    spatial: tuple[int, ...],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
) -> tuple[list[int], list[int]]:
    """(begin pads, end pads) per spatial dimension from `pads` or `auto_pad` (as ONNX defines SAME)."""
    n = len(spatial)
    auto = str(attrs.get("auto_pad", "NOTSET"))
    if auto in ("NOTSET", ""):
        pads = ints(ctx, attrs.get("pads", [0] * 2 * n), "pads", low=0)
        if len(pads) != 2 * n:
            raise ctx.error(f"pads {pads} must have {2 * n} entries")
        return pads[:n], pads[n:]
    if auto == "VALID":
        return [0] * n, [0] * n
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.error(f"auto_pad {auto!r} is not supported")
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        small = total // 2
        begin.append(small if auto == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return begin, end


def torch_pads(begin: list[int], end: list[int]) -> list[int]:
    """ONNX (begin..., end...) pads in F.pad's order: last dimension first, (begin, end) pairs."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        out += [b, e]
    return out


def window_geometry(
    ctx: NodeContext, attrs: dict[str, object], spatial: tuple[int, ...], kernel: list[int]
) -> tuple[list[int], list[int], list[int], list[int]]:
    """(strides, dilations, begin pads, end pads), checked against the spatial rank."""
    n = len(spatial)
    strides = ints(ctx, attrs.get("strides", [1] * n), "strides", low=1)
    dilations = ints(ctx, attrs.get("dilations", [1] * n), "dilations", low=1)
    if len(kernel) != n or len(strides) != n or len(dilations) != n:
        raise ctx.error(f"kernel {kernel}, strides {strides}, dilations {dilations} must have {n} entries")
    begin, end = spatial_pads(ctx, attrs, spatial, kernel, strides, dilations)
    return strides, dilations, begin, end


@converter("Conv", since=MIN_OPSET, until=MAX_OPSET)
def conv(ctx: NodeContext) -> None:
    """Conv over 1 or 2 spatial dimensions, any pads, strides, dilations and groups."""
    a = ctx.attrs("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
    x, w = ctx.tensor(0), ctx.const(1, "W")
    shape = ctx.shape(0)
    n = len(shape) - 2
    if n not in (1, 2) or w.ndim != n + 2:
        raise ctx.error(f"input {list(shape)} / kernel {list(w.shape)}: only 1-D and 2-D convolutions are supported")
    kernel = list(w.shape[2:])
    if "kernel_shape" in a and ints(ctx, a["kernel_shape"], "kernel_shape", low=1) != kernel:
        raise ctx.error(f"kernel_shape {a['kernel_shape']} disagrees with the kernel's shape {list(w.shape)}")
    groups = ints(ctx, [a.get("group", 1)], "group", low=1)[0]
    channels, out_channels = shape[1], int(w.shape[0])
    if channels % groups or out_channels % groups or w.shape[1] * groups != channels:
        raise ctx.error(f"{channels} input channels, kernel {list(w.shape)} and group={groups} do not fit")
    strides, dilations, begin, end = window_geometry(ctx, a, shape[2:], kernel)
    out_spatial = [
        (size + b + e - d * (k - 1) - 1) // s + 1
        for size, b, e, k, s, d in zip(shape[2:], begin, end, kernel, strides, dilations, strict=True)
    ]
    if min(out_spatial) < 1:
        raise ctx.error(f"the kernel {kernel} does not fit the padded input {list(shape)}")
    ctx.check_size((1, out_channels, *out_spatial))
    bias = float_tensor(ctx, ctx.const(2, "B"), "the bias") if ctx.input(2) else None
    if bias is not None and bias.shape != (out_channels,):
        raise ctx.error(f"bias shape {list(bias.shape)} must be ({out_channels},)")
    hint = layer_hint(ctx)
    symmetric = begin == end
    if not symmetric:
        ctx.check_size((1, channels, *(s + b + e for s, b, e in zip(shape[2:], begin, end, strict=True))), "padded")
        x = ctx.emit(ConstantPad(torch_pads(begin, end)), [x], f"{hint}_pad", output=f"{ctx.output}::pad")
    geometry: dict[str, Any] = {
        "stride": tuple(strides),
        "padding": tuple(begin) if symmetric else 0,
        "dilation": tuple(dilations),
    }
    cls = nn.Conv1d if n == 1 else nn.Conv2d
    layer = cls(channels, out_channels, tuple(kernel), groups=groups, bias=bias is not None, **geometry)
    with torch.no_grad():
        layer.weight.copy_(float_tensor(ctx, w, "the kernel"))
        if bias is not None and layer.bias is not None:
            layer.bias.copy_(bias)
    ctx.record(layer, "weight", ctx.input(1))
    if bias is not None:
        ctx.record(layer, "bias", ctx.input(2))
    ctx.emit(layer, [x], hint)
