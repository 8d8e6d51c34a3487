"""BatchNormalization in inference: nn.BatchNorm1d / nn.BatchNorm2d in eval mode with the file's running
statistics (the bound engine treats them as the affine maps they are)."""

from __future__ import annotations

import torch
from torch import nn

from ..context import NodeContext
from ..registry import converter
from .common import MAX_OPSET, MIN_OPSET, float_tensor, layer_hint

__all__: list[str] = []


@converter("BatchNormalization", since=MIN_OPSET, until=MAX_OPSET)
def batch_norm(ctx: NodeContext) -> None:
    a = ctx.attrs("epsilon", "momentum", "spatial", "training_mode")
    if a.get("training_mode", 0):
        raise ctx.error("training_mode=1 is not supported (an imported model is used in inference)")
    if a.get("spatial", 1) != 1:
        raise ctx.error("spatial=0 is not supported")
    ctx.check_unused_outputs(1)
    x = ctx.tensor(0)
    shape = ctx.shape(0)
    if len(shape) not in (2, 3, 4):
        raise ctx.error(f"input {list(shape)}: BatchNormalization on rank {len(shape)} is not supported")
    channels = shape[1]
    names = ("scale", "B", "input_mean", "input_var")
    scale, bias, mean, var = (float_tensor(ctx, ctx.const(k + 1, n), n) for k, n in enumerate(names))
    for n, t in zip(names, (scale, bias, mean, var), strict=True):
        if t.shape != (channels,):
            raise ctx.error(f"{n} has shape {list(t.shape)}, expected ({channels},)")
    if bool((var < 0).any()):
        raise ctx.error("input_var has negative entries")
    eps = float(a.get("epsilon", 1e-5))
    layer = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(channels, eps=eps)
    with torch.no_grad():
        layer.weight.copy_(scale)
        layer.bias.copy_(bias)
        layer.running_mean.copy_(mean)  # type: ignore[union-attr]
        layer.running_var.copy_(var)  # type: ignore[union-attr]
    ctx.emit(layer.eval(), [x], layer_hint(ctx))
