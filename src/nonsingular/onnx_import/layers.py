"""The few modules an imported graph needs beyond torch.nn: reshapes that keep the batch dimension, constant
operands, binary ops and padding. Each is plain tensor code that torch.fx traces into ops the bound engine knows
(reshape, add, sub, mul, div, cat), so attacks and bounds see nothing special.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Binary", "Concat", "ConstantOp", "ConstantPad", "Permute", "Reshape"]


class Reshape(nn.Module):
    """(N, ...) -> (N, *shape): the ONNX reshape of one example, applied to each example of a batch."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Permute(nn.Module):
    """Reorders the dimensions after the batch dimension (`dims` index the example's dimensions, from 1)."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(int(d) for d in dims)

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, *self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class ConstantPad(nn.Module):
    """Pads the trailing dimensions with a constant (`pads` in F.pad's order: last dimension first)."""

    def __init__(self, pads: Sequence[int], value: float = 0.0) -> None:
        super().__init__()
        self.pads = tuple(int(p) for p in pads)
        self.value = float(value)

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, self.pads, value=self.value)

    def extra_repr(self) -> str:
        return f"pads={self.pads}, value={self.value}"


_OPS = ("add", "sub", "rsub", "mul", "div", "rdiv")


class ConstantOp(nn.Module):
    """x + c, x - c, c - x, x * c, x / c or c / x for a constant c (a buffer, broadcast as ONNX does)."""

    c: Tensor

    def __init__(self, op: str, c: Tensor) -> None:
        super().__init__()
        if op not in _OPS:
            raise ValueError(f"unknown constant op {op!r}")
        self.op = op
        self.register_buffer("c", c.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        if self.op == "add":
            return x + self.c
        if self.op == "sub":
            return x - self.c
        if self.op == "rsub":
            return self.c - x
        if self.op == "mul":
            return x * self.c
        if self.op == "div":
            return x / self.c
        return self.c / x

    def extra_repr(self) -> str:
        return f"op={self.op}, c_shape={tuple(self.c.shape)}"


class Binary(nn.Module):
    """a + b, a - b, a * b or a / b of two tensor values (a residual connection is `add`)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        if op not in ("add", "sub", "mul", "div"):
            raise ValueError(f"unknown binary op {op!r}")
        self.op = op

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.op == "add":
            return a + b
        if self.op == "sub":
            return a - b
        if self.op == "mul":
            return a * b
        return a / b

    def extra_repr(self) -> str:
        return f"op={self.op}"


class Concat(nn.Module):
    """torch.cat of the tensor inputs along `dim` (a dimension after the batch dimension)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = int(dim)

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
