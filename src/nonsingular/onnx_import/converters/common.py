"""Helpers the converters share: parameter names and tensors from numpy."""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import Tensor

from ..context import NodeContext
from ..graph import MAX_OPSET, MIN_OPSET

__all__ = ["MAX_OPSET", "MIN_OPSET", "float_tensor", "ints", "layer_hint", "node_hint"]

_PARAM_SUFFIX = re.compile(r"[._/:]?(weight|weights|kernel|W)$")


def layer_hint(ctx: NodeContext, k: int = 1) -> str:
    """The name a parametrised layer gets: its weight initializer's name without a trailing 'weight' (so
    torch-exported 'layers.0.weight' gives 'layers_0'), unless the exporter made that name up ('onnx::Conv_34',
    a folded constant); then the node's name, then the op type."""
    name = ctx.input(k)
    if name in ctx.conv.spec.constants and not name.startswith("onnx::"):
        stem = _PARAM_SUFFIX.sub("", name)
        if stem:
            return stem
    return node_hint(ctx)


def node_hint(ctx: NodeContext) -> str:
    """The name a layer without parameters gets: the node's name without the exporter's trailing '/OpType'
    ('/conv1/Conv' gives 'conv1'), else its op type."""
    name = ctx.node.name
    suffix = f"/{ctx.node.op_type}"
    if name.endswith(suffix) and len(name) > len(suffix):
        name = name[: -len(suffix)]
    return name.strip("/") or ctx.node.op_type.lower()


def float_tensor(ctx: NodeContext, array: np.ndarray, what: str) -> Tensor:
    """A float32 tensor from a constant, refusing other dtypes (ints where a weight is expected)."""
    if array.dtype != np.float32:
        raise ctx.error(f"{what} has dtype {array.dtype}, not float32")
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))


def ints(ctx: NodeContext, values: object, what: str, low: int | None = None, high: int = 2**20) -> list[int]:
    """A list of ints from an attribute or a constant, each in [low, high] (hostile files hold huge values)."""
    seq = values.reshape(-1).tolist() if isinstance(values, np.ndarray) else values
    if not isinstance(seq, list) or not all(isinstance(v, int) for v in seq):
        raise ctx.error(f"{what} must be integers, got {values!r}")
    for v in seq:
        if (low is not None and v < low) or abs(v) > high:
            raise ctx.error(f"{what} value {v} is out of range")
    return [int(v) for v in seq]
