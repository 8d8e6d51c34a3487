"""Patch coefficients: CROWN coefficients on a (C, H, W) node that are zero outside one window per spec row.

A row that bounds one entry of a convolution's output reads, at every earlier convolutional node, only that
entry's receptive field; the dense (rows x C x H x W) coefficients spend almost all their memory and work on
zeros. `Patches` keeps each row's window: values (B, S, C, kh, kw) and the window's top-left corner in the
node's grid (B, S, 2), which may lie partly outside it (those entries are kept at zero). Rules that understand
patches (Rule.backward_patches: convolutions, ReLU, BatchNorm/Normalize, average pooling, residual adds)
transform the windows; any other rule gets the dense tensor (`Patches.dense`), so results never depend on
which representation carried them (the same sums, in another order: float64 rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Patches"]


@dataclass
class Patches:
    """Windowed coefficients of a spec on a node of shape (C, H, W).

    Attributes:
        values: (B, S, C, kh, kw), B = 1 (shared by every example) or N; zero outside the node's grid.
        anchor: (B', S, 2) long, B' in {1, B}: each window's top-left (row, column) in the node's grid.
        shape: (C, H, W) of the node.
    """

    values: Tensor
    anchor: Tensor
    shape: tuple[int, ...]

    @staticmethod
    def onehot(index: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Patches:
        """The rows e_i then -e_i for flat entry indices index (N, R) of a (C, H, W) node: 1 x 1 windows."""
        n, r = index.shape
        _, h, w = shape
        channel, pos = index // (h * w), index % (h * w)
        values = torch.zeros((n, 2 * r, shape[0], 1, 1), dtype=dtype, device=index.device)
        rows = torch.arange(2 * r, device=index.device)[None, :].expand(n, -1)
        examples = torch.arange(n, device=index.device)[:, None].expand(-1, 2 * r)
        sign = torch.ones((n, 2 * r), dtype=dtype, device=index.device)
        sign[:, r:] = -1
        values[examples, rows, channel.repeat(1, 2), 0, 0] = sign
        anchor = torch.stack([pos // w, pos % w], dim=-1).repeat(1, 2, 1)
        return Patches(values, anchor, shape)

    @property
    def window(self) -> tuple[int, int]:
        return int(self.values.shape[3]), int(self.values.shape[4])

    def _grid(self) -> tuple[Tensor, Tensor]:
        """(B', S, kh) rows and (B', S, kw) columns of every window entry in the node's grid."""
        kh, kw = self.window
        dev = self.anchor.device
        rows = self.anchor[..., 0, None] + torch.arange(kh, device=dev)
        cols = self.anchor[..., 1, None] + torch.arange(kw, device=dev)
        return rows, cols

    def inside(self) -> Tensor:
        """(B', S, 1, kh, kw) whether each window entry lies in the node's grid."""
        _, h, w = self.shape
        rows, cols = self._grid()
        ok_r, ok_c = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
        return (ok_r[..., :, None] & ok_c[..., None, :])[:, :, None]

    def gather(self, t: Tensor) -> Tensor:
        """(N, S, C', kh, kw) the entries of t (N, C', H, W) under each window (0 outside the grid); C' may be 1."""
        kh, kw = self.window
        _, h, w = self.shape
        lo = int(self.anchor.amin()) if self.anchor.numel() else 0
        hi_r = int(self.anchor[..., 0].amax()) + kh if self.anchor.numel() else 0
        hi_c = int(self.anchor[..., 1].amax()) + kw if self.anchor.numel() else 0
        top, left = max(0, -lo), max(0, -lo)
        padded = F.pad(t, (left, max(0, hi_c - w), top, max(0, hi_r - h)))
        rows, cols = self._grid()
        n = t.shape[0]
        examples = torch.arange(n, device=t.device).reshape(n, 1, 1, 1)
        # (N, S, kh, kw, C') by advanced indexing over the channels-last view, then channels first.
        picked = padded.permute(0, 2, 3, 1)[examples, (rows + top)[..., :, None], (cols + left)[..., None, :]]
        return picked.permute(0, 1, 4, 2, 3)

    def dot(self, lb: Tensor, ub: Tensor) -> Tensor:
        """(N, S) the minimum of the rows over the box [lb, ub] (N, C, H, W)."""
        v = self.values
        return (v.clamp(min=0) * self.gather(lb) + v.clamp(max=0) * self.gather(ub)).flatten(2).sum(dim=-1)

    def dense(self) -> Tensor:
        """(B, S, C, H, W) the same coefficients as a dense tensor."""
        c, h, w = self.shape
        kh, kw = self.window
        b, s = self.values.shape[:2]
        rows, cols = self._grid()
        inside = self.inside()
        flat = rows[..., :, None] * w + cols[..., None, :]  # (B', S, kh, kw)
        index = torch.arange(c, device=flat.device).reshape(1, 1, c, 1, 1) * (h * w) + flat[:, :, None]
        index = torch.where(inside, index, c * h * w).expand(b, s, c, kh, kw)  # outside: a dummy column
        out = self.values.new_zeros((b, s, c * h * w + 1))
        out = out.scatter_add(2, index.reshape(b, s, -1), self.values.reshape(b, s, -1))
        return out[:, :, :-1].reshape(b, s, c, h, w)

    def with_values(self, values: Tensor) -> Patches:
        """The same windows with other values (B, S, C, kh, kw)."""
        return Patches(values, self.anchor, self.shape)

    def masked(self) -> Patches:
        """The same windows with the entries outside the grid zeroed (after a rule spread them there)."""
        return self.with_values(self.values * self.inside().to(self.values.dtype))

    def __add__(self, other: object) -> Patches | Tensor:
        if not isinstance(other, Patches):
            return NotImplemented
        if self.shape != other.shape:
            raise ValueError(f"cannot add patches of nodes of shapes {self.shape} and {other.shape}")
        rows = max(self.anchor.shape[0], other.anchor.shape[0])
        a1, a2 = self.anchor.expand(rows, -1, -1), other.anchor.expand(rows, -1, -1)
        d = a2 - a1
        if d.numel() and not bool((d == d.reshape(-1, 2)[0]).all()):
            return self.dense() + other.dense()  # windows that move apart row by row: no common shape
        dr, dc = (int(v) for v in d.reshape(-1, 2)[0]) if d.numel() else (0, 0)
        (kh1, kw1), (kh2, kw2) = self.window, other.window
        top, left = min(0, dr), min(0, dc)
        kh, kw = max(kh1, dr + kh2) - top, max(kw1, dc + kw2) - left
        v1 = F.pad(self.values, (-left, kw - kw1 + left, -top, kh - kh1 + top))
        v2 = F.pad(other.values, (dc - left, kw - kw2 - dc + left, dr - top, kh - kh2 - dr + top))
        anchor = a1 + torch.tensor([top, left], device=a1.device)
        return Patches(v1 + v2, anchor, self.shape)

    def __neg__(self) -> Patches:
        return self.with_values(-self.values)
