"""Rules for weight layers (Linear, Conv1d, Conv2d) and element-wise affine maps (Normalize, BatchNorm in eval).

Weight layers carry the joint threat. IBP adds Lemma 1 maximised over the input box (THEORY.md section 5). CROWN
carries a . (W'h + b') back through the layer with the worst weight and bias perturbation for that fixed a:
- Linear, element-wise ball: min_D a D h = -(|a| rho) |h| exactly (Lemma 1 row by row);
- Conv, element-wise ball: the kernel is shared by all positions, and
  min_D sum_{o,p} a[o,p] (D * h)[o,p] >= -sum_{o,c,k} rho[o,c,k] sum_p |a[o,p]| |h[c,p+k]|
  (THEORY.md section 11; docs/conv-weight-bounds.md), i.e. the transposed convolution of |a| with rho, applied
  to |h|;
- |h| = h where the layer input is non-negative (after a ReLU), else |h| <= its chord over h's interval;
- operator ball: every row (output channel, at every position) moves by at most e * max |h| over what it reads,
  an additive term from the input box;
- bias radius beta: -|a| . beta (per position for convolutions).
Element-wise affine maps (Normalize, BatchNorm1d/2d with running statistics) are exact in both methods; the
threat never perturbs their parameters (only Linear/Conv weights are in ThreatModel).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Normalize
from .layer_threat import LayerThreat, UnsupportedLayerError, apply_weight, receptive_max
from .patches import Patches
from .registry import Backward, Box, Node, Rule, dot, register_rule

__all__ = ["affine_box", "conv_adjoint", "conv_patches", "elided_margin_lower"]


def affine_box(module: Any, lb: Tensor, ub: Tensor, lt: LayerThreat | None) -> Box:
    """Linear / Conv: W'h + b' over h in [lb, ub], W' in the layer's weight ball, b' in its bias box."""
    w = module.weight.to(lb.dtype)
    if lt is not None and lt.rho is not None and bool((lb >= 0).all()):
        # Non-negative inputs (after a ReLU): sum_j W'_ij h_j is a sum of independent interval products, whose
        # exact range takes W'_ij at W - rho or W + rho by the sign of that end point. Tighter than the
        # midpoint-radius form below by 2 rho (ub - lb) per term.
        w_lo, w_hi = w - lt.rho, w + lt.rho
        lo = apply_weight(module, lb, w_lo.clamp(min=0)) + apply_weight(module, ub, w_lo.clamp(max=0))
        hi = apply_weight(module, ub, w_hi.clamp(min=0)) + apply_weight(module, lb, w_hi.clamp(max=0))
    else:
        w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
        lo = apply_weight(module, lb, w_pos) + apply_weight(module, ub, w_neg)
        hi = apply_weight(module, ub, w_pos) + apply_weight(module, lb, w_neg)
        if lt is not None:
            # Lemma 1 maximised over the box: sum_j rho_ij max(|lb_j|, |ub_j|), or e * max_j of the same.
            a = torch.maximum(lb.abs(), ub.abs())
            term = (
                apply_weight(module, a, lt.rho)
                if lt.rho is not None
                else lt.operator_radius() * receptive_max(module, a)
            )
            lo, hi = lo - term, hi + term
    if module.bias is not None:
        shape = (-1,) if isinstance(module, nn.Linear) else (-1, *([1] * (lo.dim() - 2)))
        b = module.bias.to(lb.dtype).reshape(shape)
        lo, hi = lo + b, hi + b
        if lt is not None and lt.beta is not None:
            beta = lt.beta.reshape(shape)
            lo, hi = lo - beta, hi + beta
    return lo, hi


def elided_margin_lower(module: nn.Linear, lt: LayerThreat | None, lb: Tensor, ub: Tensor, y: Tensor) -> Tensor:
    """(N, K) lower bounds on m_k = (W'_y - W'_k) h + b'_y - b'_k for h in [lb, ub] (N, n): the last layer folded
    into the margin, so that rows y and k are bounded jointly rather than as two separate logits.

    Column y is meaningless (set it to 0 afterwards).
    """
    w = module.weight.to(lb.dtype)
    c = w[y][:, None, :] - w[None, :, :]  # (N, K, n)
    if lt is not None and lt.rho is not None and bool((lb >= 0).all()):
        # Rows y and k move independently: each coefficient of the margin lies in C +- (rho_y + rho_k).
        c = c - (lt.rho[y][:, None, :] + lt.rho[None, :, :])
        lower = (c.clamp(min=0) * lb[:, None, :] + c.clamp(max=0) * ub[:, None, :]).sum(dim=-1)
    else:
        lower = (c.clamp(min=0) * lb[:, None, :] + c.clamp(max=0) * ub[:, None, :]).sum(dim=-1)
        if lt is not None:
            a = torch.maximum(lb.abs(), ub.abs())
            term = (
                F.linear(a, lt.rho)
                if lt.rho is not None
                else (lt.operator_radius() * a.amax(dim=1, keepdim=True)).expand(-1, w.shape[0])
            )
            lower = lower - term.gather(1, y[:, None]) - term
    if module.bias is not None:
        b = module.bias.to(lb.dtype)
        lower = lower + b[y][:, None] - b[None, :]
        if lt is not None and lt.beta is not None:
            lower = lower - lt.beta[y][:, None] - lt.beta[None, :]
    return lower


def _abs_chord(lb: Tensor, ub: Tensor) -> tuple[Tensor, Tensor]:
    """(slope, offset) with |h| <= slope * h + offset on [lb, ub], equality at both ends (N, *shape)."""
    unstable = (lb < 0) & (ub > 0)
    width = torch.where(unstable, ub - lb, torch.ones_like(lb))
    slope = torch.where(unstable, (ub + lb) / width, torch.where(lb >= 0, 1.0, -1.0).to(lb))
    offset = torch.where(unstable, -2 * ub * lb / width, torch.zeros_like(lb))
    return slope, offset


def _expands_to(target: torch.Size, *shapes: torch.Size) -> bool:
    """Whether every shape broadcasts to `target` itself (an in-place update of a `target` tensor is valid).
    Not torch.broadcast_shapes: its first call imports sympy (~0.2 s)."""
    return all(
        len(shape) <= len(target)
        and all(d in (1, t) for d, t in zip(shape, target[len(target) - len(shape) :], strict=True))
        for shape in shapes
    )


def _abs_input_term(
    new_a: Tensor, c: Tensor | float, r: Tensor | float, lb: Tensor, ub: Tensor
) -> tuple[Tensor, Tensor | float]:
    """Subtract r . |h| (r >= 0: (B, S, *in), broadcastable to it, or one number) from the bound, |h| linear in h
    over [lb, ub]. new_a is the caller's own fresh tensor: it may be updated in place."""
    if bool((lb >= 0).all()):
        return new_a - r, c
    slope, offset = _abs_chord(lb, ub)
    # The products r * slope and r * offset are never materialised on their own: on an MLP's first layer
    # (784 inputs, ~200 rows per example) each is a full coefficient-sized pass, and these passes, not the
    # matmuls, were most of a joint CROWN call.
    if not isinstance(r, Tensor):
        return torch.add(new_a, slope[:, None], alpha=-r), c - r * offset.flatten(1).sum(dim=-1, keepdim=True)
    if _expands_to(new_a.shape, r.shape, slope[:, None].shape):
        new_a = new_a.addcmul_(r, slope[:, None], value=-1.0)  # no second coefficient-sized tensor
    else:
        new_a = torch.addcmul(new_a, r, slope[:, None], value=-1.0)
    if math.prod(r.shape[2:]) == 1:  # one radius per row (a uniform rho): sum the offsets first
        return new_a, c - r.flatten(2)[..., 0] * offset.flatten(1).sum(dim=-1, keepdim=True)
    if r.is_contiguous():
        return new_a, c - dot(r, offset)
    return new_a, c - (r * offset[:, None]).flatten(2).sum(dim=-1)


class _AffineRule(Rule):
    """What Linear and Conv share: the interval rule `affine_box` and when it is exact."""

    def exact_on_box(self, lt: LayerThreat | None) -> bool:
        return lt is None  # each output entry is a sum of independent interval terms

    def exact_on_point(self, lt: LayerThreat | None) -> bool:
        # A fixed input h: output i is (W h + b)_i plus terms that vary independently, rho_ij h_j per weight
        # (element-wise) or the l1 ball's support e max_j |h_j| (operator), plus the bias box: affine_box's
        # W h + b +- that is each entry's true range.
        return True

    def ibp(self, node: Node, boxes: list[Box], lt: LayerThreat | None) -> Box:
        return affine_box(node.module, *boxes[0], lt)


class LinearRule(_AffineRule):
    """nn.Linear on (N, in) inputs (Lemma 1 is exact for a fixed backward coefficient)."""

    def backward(
        self, node: Node, a: Tensor, boxes: list[Box], lt: LayerThreat | None, ctx: Backward
    ) -> tuple[list[Tensor | None], Tensor | float]:
        module: Any = node.module
        lb, ub = boxes[0]
        if lb.dim() != 2:
            raise UnsupportedLayerError(
                f"CROWN bounds Linear layers on (N, features) inputs; '{node.name}' reads shape "
                f"{tuple(lb.shape[1:])} (flatten first)"
            )
        w = module.weight.to(lb.dtype)
        new_a = a @ w
        c: Tensor | float = 0.0
        if module.bias is not None:
            c = a @ module.bias.to(lb.dtype)
        if lt is None:
            return [new_a], c
        abs_a = a.abs()
        if lt.beta is not None:
            c = c - abs_a @ lt.beta
        if lt.rho is not None:
            r = abs_a.sum(dim=-1, keepdim=True) * lt.uniform if lt.uniform is not None else abs_a @ lt.rho
            new_a, c = _abs_input_term(new_a, c, r, lb, ub)
        else:
            h_max = torch.maximum(lb.abs(), ub.abs()).amax(dim=1)  # (N,)
            c = c - abs_a.sum(dim=-1) * lt.operator_radius() * h_max[:, None]
        return [new_a], c

    def backward_rows(
        self, node: Node, index: Tensor, boxes: list[Box], lt: LayerThreat | None, ctx: Backward
    ) -> tuple[list[Tensor | None], Tensor | float]:
        # Row e_i of the spec carries back as row i of the weight: a gather, not a matmul.
        module: Any = node.module
        lb, ub = boxes[0]
        if lb.dim() != 2:
            return super().backward_rows(node, index, boxes, lt, ctx)
        w = module.weight.to(lb.dtype)
        c: Tensor | float = 0.0
        if module.bias is not None:
            b = module.bias.to(lb.dtype)[index]
            c = torch.cat([b, -b], dim=1)
        if lt is not None and lt.beta is not None:
            c = c - lt.beta[index].repeat(1, 2)  # |a| = e_i for both signs
        # Both signs' rows (N, 2R, in): the rows gathered twice, the second copy negated in place (exact), the one
        # coefficient-sized tensor made here.
        new_a = w[torch.cat([index, index], dim=1)]
        new_a[:, index.shape[1] :].neg_()
        if lt is not None and lt.uniform is not None and not bool((lb >= 0).all()):
            # One radius for every weight: both signs' rows minus the same chord term r * slope, in place
            # (w - s and -w - s, the same roundings as -s - w).
            slope, offset = _abs_chord(lb, ub)
            new_a.sub_((lt.uniform * slope)[:, None])
            return [new_a], c - lt.uniform * offset.flatten(1).sum(dim=-1, keepdim=True)
        if lt is None:
            return [new_a], c
        if lt.rho is not None:
            r = lt.uniform if lt.uniform is not None else lt.rho[index].repeat(1, 2, 1)
            new_a, c = _abs_input_term(new_a, c, r, lb, ub)
        else:
            h_max = torch.maximum(lb.abs(), ub.abs()).amax(dim=1)  # (N,)
            c = c - lt.operator_radius() * h_max[:, None]
        return [new_a], c


def conv_adjoint(module: Any, a: Tensor, weight: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """The adjoint of the convolution with `weight` (no bias): (M, C_out, *out) -> (M, C_in, *in)."""
    if isinstance(module.padding, str):
        # 'same' may pad asymmetrically, which conv_transpose cannot express: use the map's own adjoint.
        zero = a.new_zeros((a.shape[0], *in_shape))
        pull = torch.func.vjp(lambda h: apply_weight(module, h, weight), zero)[1]
        adjoint: Tensor = pull(a)[0]
        return adjoint
    out_spatial = a.shape[2:]
    k = weight.shape[2:]
    extra = [
        in_shape[1 + i]
        - ((out_spatial[i] - 1) * module.stride[i] - 2 * module.padding[i] + module.dilation[i] * (k[i] - 1) + 1)
        for i in range(len(k))
    ]
    conv_t = F.conv_transpose1d if isinstance(module, nn.Conv1d) else F.conv_transpose2d
    return conv_t(a, weight, None, module.stride, module.padding, tuple(extra), module.groups, module.dilation)


def _patches(module: Any, h: Tensor) -> Tensor:
    """(N, C * kernel entries, positions) the input entries each output position reads (im2col)."""
    if isinstance(module, nn.Conv1d):
        return F.unfold(
            h.unsqueeze(2),
            (1, module.kernel_size[0]),
            dilation=(1, module.dilation[0]),
            padding=(0, int(module.padding[0])),
            stride=(1, module.stride[0]),
        )
    return F.unfold(h, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)


#: Largest einsum (multiply-adds) the exact fixed-input kernel term may cost per call.
_EXACT_TERM_MAX_MACS = 2e9


def _fixed_input_term(
    module: Any, a: Tensor, lb: Tensor, ub: Tensor, lt: LayerThreat, memory_mb: float
) -> Tensor | None:
    """(N, S) the exact worst kernel term when the layer input h is fixed (lb == ub, e.g. the first layer under a
    weight-only threat), or None when it does not apply or its tensor would exceed the memory budget.

    With G[o, c, k] = sum_p a[o, p] h[c, p + k] (the kernel gradient of a . conv(h)), min over the element-wise ball
    of sum G D is -sum rho |G|, and over the operator ball (each output channel's kernel in an l1 ball of radius e)
    -e sum_o max |G[o]| (docs/conv-weight-bounds.md).
    """
    if module.groups != 1 or isinstance(module.padding, str) or not bool((lb == ub).all()):
        return None
    b, s, n, c_out = a.shape[0], a.shape[1], lb.shape[0], a.shape[2]
    cols = _patches(module, lb)  # (N, Q, L)
    if n * s * c_out * cols.shape[1] * a.element_size() * 2 > memory_mb * 2**20:
        return None
    if n * s * c_out * cols.shape[1] * cols.shape[2] > _EXACT_TERM_MAX_MACS:
        # Tightening a wide intermediate node (s in the thousands) would spend minutes here; the per-position
        # relaxation the caller falls back to is also sound, and the final margins (small s) stay exact.
        return None
    a_l = a.reshape(b, s, c_out, -1)
    g = (torch.einsum("sol,nql->nsoq", a_l[0], cols) if b == 1 else torch.einsum("nsol,nql->nsoq", a_l, cols)).abs()
    if lt.rho is not None:
        return (g * lt.rho.reshape(c_out, -1)).sum(dim=(-2, -1))
    return lt.operator_radius() * g.amax(dim=-1).sum(dim=-1)


class ConvRule(_AffineRule):
    """nn.Conv1d / nn.Conv2d with zero padding, any stride, dilation and groups."""

    def backward(
        self, node: Node, a: Tensor, boxes: list[Box], lt: LayerThreat | None, ctx: Backward
    ) -> tuple[list[Tensor | None], Tensor | float]:
        module: Any = node.module
        lb, ub = boxes[0]
        if module.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"bounds support convolutions with padding_mode='zeros' only; '{node.name}' uses "
                f"{module.padding_mode!r}"
            )
        b, s = a.shape[:2]
        in_shape = tuple(lb.shape[1:])
        w = module.weight.to(lb.dtype)
        flat = a.reshape(b * s, *a.shape[2:])
        new_a = conv_adjoint(module, flat, w, in_shape).reshape(b, s, *in_shape)
        per_channel = a.flatten(3).sum(dim=-1)  # (B, S, C_out): a summed over positions
        c: Tensor | float = 0.0
        if module.bias is not None:
            c = per_channel @ module.bias.to(lb.dtype)
        if lt is None:
            return [new_a], c
        abs_a = a.abs()
        if lt.beta is not None:
            c = c - abs_a.flatten(3).sum(dim=-1) @ lt.beta
        exact = _fixed_input_term(module, a, lb, ub, lt, ctx.memory_mb)
        if exact is not None:
            return [new_a], c - exact
        if lt.rho is not None:
            # Per-position Lemma 1 (a relaxation of the shared kernel, docs/conv-weight-bounds.md).
            if lt.uniform is not None and module.groups == 1:
                # rho is one number: R[c, q] does not depend on c, so sum |a| over output channels first and
                # spread it with a one-channel kernel of ones (C_out x C_in times cheaper).
                ones = lt.rho.new_ones((1, 1, *lt.rho.shape[2:]))
                summed = abs_a.sum(dim=2).reshape(b * s, 1, *a.shape[3:])
                r = lt.uniform * conv_adjoint(module, summed, ones, (1, *in_shape[1:]))
                r = r.reshape(b, s, 1, *in_shape[1:]).expand(b, s, *in_shape)
            else:
                r = conv_adjoint(module, abs_a.reshape(b * s, *a.shape[2:]), lt.rho, in_shape)
                r = r.reshape(b, s, *in_shape)
            new_a, c = _abs_input_term(new_a, c, r, lb, ub)
        else:
            h_max = receptive_max(module, torch.maximum(lb.abs(), ub.abs()))  # (N, 1, *out)
            c = c - lt.operator_radius() * (abs_a * h_max[:, None]).flatten(2).sum(dim=-1)
        return [new_a], c

    def backward_patches(
        self, node: Node, a: Any, boxes: list[Box], lt: LayerThreat | None, ctx: Backward
    ) -> tuple[list[Any], Tensor | float] | None:
        module: Any = node.module
        lb, ub = boxes[0]
        if not _patch_form(module) or (lt is not None and bool((lb == ub).all())):
            return None  # 'same' padding, or a fixed input (its exact kernel term needs dense coefficients)
        in_shape = tuple(lb.shape[1:])
        w = module.weight.to(lb.dtype)
        new = conv_patches(module, a, w, in_shape)
        per_channel = a.values.flatten(3).sum(dim=-1)  # (B, S, C_out)
        c: Tensor | float = 0.0
        if module.bias is not None:
            c = per_channel @ module.bias.to(lb.dtype)
        if lt is None:
            return [new], c
        abs_v = a.values.abs()
        if lt.beta is not None:
            c = c - abs_v.flatten(3).sum(dim=-1) @ lt.beta
        if lt.rho is not None:
            r = conv_patches(module, a.with_values(abs_v), lt.rho, in_shape).values
            if bool((lb >= 0).all()):
                return [new.with_values(new.values - r)], c
            slope, offset = _abs_chord(lb, ub)
            values = new.values - r * new.gather(slope)
            return [new.with_values(values)], c - (r * new.gather(offset)).flatten(2).sum(dim=-1)
        h_max = receptive_max(module, torch.maximum(lb.abs(), ub.abs()))  # (N, 1, *out)
        return [new], c - lt.operator_radius() * (abs_v * a.gather(h_max)).flatten(2).sum(dim=-1)


def conv_patches(module: Any, p: Patches, weight: Tensor, in_shape: tuple[int, ...]) -> Patches:
    """The adjoint of a 2-d convolution with `weight` (no bias) on patches: each window spreads to the input
    window it reads (top-left anchor * stride - padding), zeroed outside the input grid."""
    b, s, c_out, kh, kw = p.values.shape
    v = F.conv_transpose2d(
        p.values.reshape(b * s, c_out, kh, kw), weight, None, module.stride, 0, 0, module.groups, module.dilation
    )
    shift = torch.tensor(module.stride, device=p.anchor.device)
    anchor = p.anchor * shift - torch.tensor(module.padding, device=p.anchor.device)
    return Patches(v.reshape(b, s, *v.shape[1:]), anchor, in_shape).masked()


def _patch_form(module: Any) -> bool:
    return isinstance(module, nn.Conv2d) and not isinstance(module.padding, str) and module.padding_mode == "zeros"


def _channel_shape(t: Tensor, dims: int) -> Tensor:
    """Per-channel (C,) or scalar statistics shaped to broadcast over (N, C, *spatial) tensors of `dims` dims."""
    if t.numel() == 1:
        return t.reshape(())
    return t.reshape(1, -1, *([1] * (dims - 2)))


class ChannelAffineRule(Rule):
    """x -> scale * x + shift per channel: Normalize and BatchNorm in eval mode (running statistics)."""

    exact_box = True
    elementwise = True

    def scale_shift(self, module: Any, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(scale, shift), each (C,) or 0-dim, in `dtype`."""
        if isinstance(module, Normalize):
            std, mean = module.std.to(dtype), module.mean.to(dtype)
            return 1 / std, -mean / std
        if module.running_mean is None:
            raise UnsupportedLayerError(
                f"bounds need BatchNorm with running statistics (track_running_stats=True); "
                f"{type(module).__name__} has none"
            )
        var = module.running_var.to(dtype)
        scale = 1 / torch.sqrt(var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight.to(dtype)
        shift = -module.running_mean.to(dtype) * scale
        if module.bias is not None:
            shift = shift + module.bias.to(dtype)
        return scale, shift

    def ibp(self, node: Node, boxes: list[Box], lt: LayerThreat | None) -> Box:
        lb, ub = boxes[0]
        if isinstance(node.module, Normalize):
            lo, hi = node.module(lb), node.module(ub)  # the module's own arithmetic: exact end points
        else:
            scale, shift = self.scale_shift(node.module, lb.dtype)
            scale, shift = _channel_shape(scale, lb.dim()), _channel_shape(shift, lb.dim())
            lo, hi = lb * scale + shift, ub * scale + shift
        return torch.minimum(lo, hi), torch.maximum(lo, hi)

    def backward(
        self, node: Node, a: Tensor, boxes: list[Box], lt: LayerThreat | None, ctx: Backward
    ) -> tuple[list[Tensor | None], Tensor | float]:
        scale, shift = self.scale_shift(node.module, a.dtype)
        scale, shift = _channel_shape(scale, a.dim() - 1), _channel_shape(shift, a.dim() - 1)
        c = (a * shift).flatten(2).sum(dim=-1)
        return [a * scale], c

    def backward_patches(
        self, node: Node, a: Any, boxes: list[Box], lt: LayerThreat | None, ctx: Backward
    ) -> tuple[list[Any], Tensor | float] | None:
        scale, shift = self.scale_shift(node.module, a.values.dtype)
        # over (B, S, C, kh, kw): channels on dim 2
        scale, shift = _channel_shape(scale, 4)[None], _channel_shape(shift, 4)[None]
        return [a.with_values(a.values * scale)], (a.values * shift).flatten(2).sum(dim=-1)


_AFFINE = ChannelAffineRule()
register_rule(nn.Linear, LinearRule())
register_rule(nn.Conv1d, ConvRule())
register_rule(nn.Conv2d, ConvRule())
register_rule(Normalize, _AFFINE)
register_rule(nn.BatchNorm1d, _AFFINE)
register_rule(nn.BatchNorm2d, _AFFINE)
