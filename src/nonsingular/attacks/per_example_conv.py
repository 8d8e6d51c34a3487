"""A 2-d convolution with its own kernel W + D[i] for each example i, hand-differentiated for the attack.

The per-example joint attack's convolutions (THEORY.md section 3: Lemma 1 does not cover a kernel applied at
many positions) run as one grouped convolution over the batch folded into channels, (1, n C, H, W), with
n x groups groups. Autograd through `F.conv2d` pays for that in three places this module avoids:

- oneDNN picks one memory layout for the forward and both backward products, and for a batch folded into
  channels no one layout suits all three (batch 128, 1 thread, ms, fastest of 7, `benchmarks.conv_per_example`):
  the input gradient of SmallCNN's 16 -> 32 convolution takes 3x longer in NCHW than in channels-last, while its
  forward and kernel gradient are faster in NCHW, and the 1 -> 16 convolution is the other way round. Each
  product here runs in its own layout (`_Layouts`).
- oneDNN's own return to NCHW, and `Tensor.contiguous()`, convert a channels-last (1, n C, H, W) tensor with a
  strided 4-d copy that is ~5x slower than the same transpose as a 2-d one (`_from_channels_last`).
- The bias goes into the convolution, and W + D is formed inside the op: no (n, C, H, W) add in the forward, no
  add node in the graph (the gradient of D is the gradient of the kernel).

The products are the same as autograd's (kernel W + D, the layer's bias, stride, padding, dilation, groups):
only the memory layouts and thus the float rounding of the sums differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["per_example_conv2d", "supports"]


def supports(module: nn.Module) -> bool:
    """Whether `per_example_conv2d` computes `module`'s map: a plain nn.Conv2d with zero padding given in numbers.

    (Padding given as 'same' / 'valid' takes the generic grouped convolution: its backward needs the numbers.)
    """
    return (
        type(module) is nn.Conv2d
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and module.transposed is False
    )


@dataclass(frozen=True)
class _Layouts:
    """Channels-last (True) or NCHW (False) for the forward, the input gradient and the kernel gradient, and
    whether the forward and the kernel gradient run as batched products with the unfolded input instead."""

    forward: bool
    input_grad: bool
    kernel_grad: bool
    unfold: bool = False


def _plan(in_per_group: int, kernel_size: tuple[int, ...], stride: tuple[int, ...], groups: int) -> _Layouts:
    """How each product runs, from the layer's shape alone (never from timings taken at run time, so an attack's
    numbers do not vary from run to run).

    Measured with oneDNN 3.x on AVX-512, one thread, batch 128, fresh kernels W + D each call (BENCHMARKS.md,
    "Per-example joint convolutions: the measured argument"), on SmallCNN's and LeNet's four layers:
    - one input channel per group (a first layer on grey images: a depthwise convolution once folded): the
      input gradient in NCHW (1.4 / 2.7 ms against 5.1 / 3.9 channels-last); several: channels-last (8.3 / 3.3
      against 17.7 / 4.5 ms).
    - 5x5 kernels: forward and kernel gradient channels-last (forward 1.9 / 1.8 against 2.8 / 4.4 ms in NCHW
      with the return to NCHW, kernel gradient 1.7 / 2.4 against 3.0 / 4.9 ms); 3x3 kernels: both in NCHW (kernel
      gradient 1.8 / 3.0 against 2.7 / 7.6 ms; a channels-last forward of the stride-2 layer, 6.1 against 6.9 ms
      alone, made the layer slower inside the attack, 23 -> 27 ms);
    - a stride-1 3x3 layer on one input channel: the unfolded products (patches 1.3 ms, forward 0.8, kernel
      gradient 0.8, against 2.7 + 1.8 ms grouped).
    """
    area = math.prod(kernel_size)
    if in_per_group == 1 and groups == 1 and all(st == 1 for st in stride) and area <= 9:
        return _Layouts(forward=False, input_grad=False, kernel_grad=False, unfold=True)
    return _Layouts(forward=area >= 25, input_grad=in_per_group > 1, kernel_grad=area >= 25)


def _to_channels_last(t: Tensor) -> Tensor:
    """(1, C, H, W) NCHW -> the same tensor in channels-last layout, as one 2-d transpose (C, HW) -> (HW, C)."""
    _, c, h, w = t.shape
    out = torch.empty_like(t, memory_format=torch.channels_last)
    out.permute(0, 2, 3, 1).view(h * w, c).copy_(t.reshape(c, h * w).t())
    return out


def _from_channels_last(t: Tensor) -> Tensor:
    """(1, C, H, W) in channels-last layout (or NCHW, returned as is) -> NCHW contiguous, as one 2-d transpose.

    torch's 4-d strided copy (what `.contiguous()` runs) takes ~10 ms for (1, 2048, 28, 28) on one thread; the
    2-d transpose kernel ~2 ms.
    """
    if t.is_contiguous():
        return t
    _, c, h, w = t.shape
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    out.view(c, h * w).copy_(t.permute(0, 2, 3, 1).reshape(h * w, c).t())
    return out


def _as(t: Tensor, channels_last: bool) -> Tensor:
    """A (1, C, H, W) activation in the layout asked for."""
    return _to_channels_last(t) if channels_last else _from_channels_last(t)


def _kernel_as(k: Tensor, channels_last: bool) -> Tensor:
    return k.contiguous(memory_format=torch.channels_last) if channels_last else k.contiguous()


class _PerExampleConv2d(torch.autograd.Function):
    """out[i] = conv2d(h[i], weight + delta[i]) + bias, for h (n, C, H, W) and delta (n, *weight.shape).

    Gradients for every tensor argument: the attack asks for h's and delta's; training through the frozen
    perturbation (`training.objectives`) for the weight's and the bias's, which are delta's summed over the
    examples and the output gradient summed over examples and positions. First order only.
    """

    @staticmethod
    def forward(
        ctx: Any,
        h: Tensor,
        delta: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        geometry: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int],
    ) -> Tensor:
        stride, padding, dilation, groups = geometry
        n = h.shape[0]
        # Example i's kernels are rows i C_out ... (i + 1) C_out - 1 of the folded kernel.
        kernel = (weight + delta).reshape(-1, *weight.shape[1:])
        folded = h.reshape(1, -1, *h.shape[2:]).contiguous()
        layouts = _plan(weight.shape[1], tuple(weight.shape[2:]), stride, groups)
        ctx.geometry, ctx.layouts, ctx.n = geometry, layouts, n
        ctx.h_shape, ctx.delta_shape = h.shape, delta.shape
        if layouts.unfold:
            # out[i] = (W + D[i]) as (C_out, C_in k k) @ patches[i] (C_in k k, positions), bias added in the product.
            patches = F.unfold(h, weight.shape[2:], dilation, padding, stride)
            rows = kernel.reshape(n, weight.shape[0], -1)
            flat = torch.bmm(rows, patches) if bias is None else torch.baddbmm(bias[None, :, None], rows, patches)
            ctx.save_for_backward(folded, kernel, patches)
            return flat.reshape(n, weight.shape[0], *_out_size(h.shape[2:], weight.shape[2:], geometry))
        folded_bias = None if bias is None else bias.repeat(n)
        out = F.conv2d(
            _as(folded, layouts.forward),
            _kernel_as(kernel, layouts.forward),
            folded_bias,
            stride,
            padding,
            dilation,
            n * groups,
        )
        ctx.save_for_backward(folded, kernel)
        return _from_channels_last(out).reshape(n, weight.shape[0], *out.shape[2:])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        folded, kernel, *patches = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        layouts: _Layouts = ctx.layouts
        n = ctx.n
        g_folded = g.reshape(1, -1, *g.shape[2:]).contiguous()
        common = (None, list(stride), list(padding), list(dilation), False, [0, 0], n * groups)
        grad_h = grad_delta = None
        if ctx.needs_input_grad[0]:
            # The input gradient as the transposed convolution it is: oneDNN's deconvolution runs it ~2x faster
            # than convolution_backward's input-gradient kernel in channels-last (8.3 -> 4.5 ms, SmallCNN's
            # 16 -> 32 layer). output_padding restores the rows a strided forward dropped.
            size = folded.shape[2:]
            kernel_size = kernel.shape[2:]
            output_padding = [
                size[d] - ((g.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (kernel_size[d] - 1) + 1)
                for d in range(2)
            ]
            gi = F.conv_transpose2d(
                _as(g_folded, layouts.input_grad),
                _kernel_as(kernel, layouts.input_grad),
                None,
                stride,
                padding,
                output_padding,
                n * groups,
                dilation,
            )
            grad_h = _from_channels_last(gi).reshape(ctx.h_shape)
        if (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]) and patches:
            # dD[i] = g[i] (C_out, positions) @ patches[i]^T: the forward's patches serve again.
            g_rows = g.reshape(n, g.shape[1], -1)
            grad_delta = torch.bmm(g_rows, patches[0].transpose(1, 2)).reshape(ctx.delta_shape)
        elif ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, gk, _ = torch.ops.aten.convolution_backward(
                _as(g_folded, layouts.kernel_grad),
                _as(folded, layouts.kernel_grad),
                _kernel_as(kernel, layouts.kernel_grad),
                *common,
                [False, True, False],
            )
            grad_delta = gk.contiguous().reshape(ctx.delta_shape)
        grad_weight = grad_delta.sum(0) if ctx.needs_input_grad[2] and grad_delta is not None else None
        grad_bias = g.sum((0, 2, 3)) if ctx.needs_input_grad[3] else None
        if not ctx.needs_input_grad[1]:
            grad_delta = None
        return grad_h, grad_delta, grad_weight, grad_bias, None


def _out_size(
    size: tuple[int, ...] | torch.Size,
    kernel_size: tuple[int, ...] | torch.Size,
    geometry: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int],
) -> tuple[int, ...]:
    """Height and width of a convolution's output (torch.nn.Conv2d's formula)."""
    stride, padding, dilation, _ = geometry
    return tuple((size[d] + 2 * padding[d] - dilation[d] * (kernel_size[d] - 1) - 1) // stride[d] + 1 for d in range(2))


def per_example_conv2d(module: nn.Conv2d, h: Tensor, delta: Tensor, parameter_grads: bool = True) -> Tensor:
    """`module` applied to each example h[i] with weight module.weight + delta[i] (and its own bias).

    h: (n, C_in, H, W); delta: (n, *module.weight.shape). Differentiable in h and delta, and in the module's
    weight and bias unless `parameter_grads` is False (an attack: their sums over the examples are skipped).
    """
    geometry = (
        tuple(module.stride),
        tuple(module.padding),  # a string padding is excluded by `supports`
        tuple(module.dilation),
        module.groups,
    )
    weight, bias = module.weight, module.bias
    if not parameter_grads:
        weight, bias = weight.detach(), None if bias is None else bias.detach()
    out: Tensor = _PerExampleConv2d.apply(h, delta, weight, bias, geometry)  # type: ignore[no-untyped-call]
    return out
