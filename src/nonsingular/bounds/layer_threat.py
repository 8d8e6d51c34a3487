"""What every bound needs from a model: the threat at each weight layer, and (for the norm bound, which reasons
about a chain layer by layer) its layers in execution order.

The norm bound accepts `nn.Sequential` models (nested Sequentials are flattened) whose containers keep
`nn.Sequential.forward`; IBP and CROWN trace any graph (graph.py).
The per-layer radii come from `ThreatModel.layer_radii`, the one derivation of the threat set's radii that the
attacks use too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..threat import EpsMode, ThreatModel, WeightBall

__all__ = [
    "LayerThreat",
    "UnsupportedLayerError",
    "apply_weight",
    "clean_logits",
    "layer_threats",
    "receptive_max",
    "sequential_layers",
]

Layers = Sequence[tuple[str, nn.Module]]


class UnsupportedLayerError(ValueError):
    """A bound met a layer it has no rule for (the message names the layer and what to implement)."""


def sequential_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf layers of a (nested) `nn.Sequential` in execution order, named as in `model.named_modules()`.

    Raises:
        UnsupportedLayerError: the model, or a container inside it, is not a plain `nn.Sequential` (a custom
            `forward` may do anything, so no bound can follow it).
    """
    out: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        if type(module).forward is not nn.Sequential.forward:
            raise UnsupportedLayerError(
                f"the norm bound (Theorem 2) needs an nn.Sequential chain (nested Sequentials allowed) without a "
                f"custom forward; '{prefix or 'model'}' is a {type(module).__name__} (ibp, crown and alpha-crown "
                f"bound any traceable graph)"
            )
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(child, nn.Sequential):
                walk(child, full)
            else:
                out.append((full, child))

    if not isinstance(model, nn.Sequential):
        raise UnsupportedLayerError(
            f"the norm bound (Theorem 2) needs an nn.Sequential chain (nested Sequentials allowed); got a "
            f"{type(model).__name__} (ibp, crown and alpha-crown bound any traceable graph)"
        )
    walk(model, "")
    return out


@dataclass(frozen=True)
class LayerThreat:
    """The threat at one Linear/Conv layer, in the dtype the bound computes in.

    Attributes:
        name: module name.
        ball: element-wise box or operator-norm ball.
        rho: element-wise ball: |D[i,j]| <= rho[i,j], the weight's shape; None under the operator ball.
        e: operator ball: ||D||_inf <= e (0-dim); None under the element-wise ball.
        beta: bias radius (out,), or None when biases are not perturbed.
        uniform: rho's single value when it is constant (absolute element-wise), which lets backward passes
            replace |A| @ rho by a row sum; None otherwise.
        out_features: rows of the weight (output channels of a kernel).
    """

    name: str
    ball: WeightBall
    rho: Tensor | None
    e: Tensor | None
    beta: Tensor | None
    uniform: float | None
    out_features: int

    def row_sums(self) -> Tensor:
        """(out,) bound on the l1 norm of each row of D (rows of a kernel are its output channels)."""
        if self.rho is not None:
            return self.rho.reshape(self.out_features, -1).sum(dim=1)
        return self.operator_radius().expand(self.out_features)

    def operator_radius(self) -> Tensor:
        """e of the operator ball (0-dim).

        Raises:
            ValueError: the layer's ball is element-wise (it has rho, not e).
        """
        if self.e is None:
            raise ValueError(f"layer {self.name} has an element-wise ball: rho, not an operator radius e")
        return self.e

    def operator_norm(self) -> Tensor:
        """eta: a bound on ||D||_inf (THEORY.md section 4), 0-dim."""
        return self.row_sums().max()


def _straight_through(value: Tensor, eps: float, source: Tensor) -> Tensor:
    """`value` (the threat's radius, computed from detached weights) with the gradient of eps * source.

    ThreatModel detaches the weights it scales relative radii by; training on a bound wants their gradient.
    The forward value is exactly `value` (source - source.detach() is exactly 0).
    """
    if not source.requires_grad:
        return value
    return value + eps * (source - source.detach())


def layer_threats(model: nn.Module, threat: ThreatModel, dtype: torch.dtype) -> dict[str, LayerThreat]:
    """The perturbed weight layers of `model` and their radii, cast to `dtype`.

    Relative radii carry the gradient of the weights they scale with (the value is the threat's own).
    """
    out: dict[str, LayerThreat] = {}
    relative = threat.weight_mode is EpsMode.RELATIVE
    for name, module in threat.weight_layers(model):
        weight = module.weight.to(dtype)
        bias = None if module.bias is None else module.bias.to(dtype)
        radii = threat.layer_radii(name, weight, bias)
        eps = threat.eps_w_for(name)
        rho, e, beta = radii.rho, radii.e, radii.beta
        if relative and rho is not None:
            rho = _straight_through(rho, eps, weight.abs())
        if relative and e is not None:
            e = _straight_through(e, eps, weight.reshape(weight.shape[0], -1).abs().sum(dim=1).max())
        if relative and beta is not None and bias is not None:
            beta = _straight_through(beta, threat.eps_b, bias.abs())
        out[name] = LayerThreat(
            name=name,
            ball=radii.ball,
            rho=rho,
            e=e,
            beta=beta,
            uniform=radii.uniform,
            out_features=int(weight.shape[0]),
        )
    return out


def apply_weight(module: nn.Module, h: Tensor, weight: Tensor) -> Tensor:
    """The layer's linear map with `weight` in place of its own, no bias: F.linear or the module's convolution.

    h: (N, in) for Linear, (N, C, *spatial) for Conv1d/Conv2d.
    """
    if isinstance(module, nn.Linear):
        return F.linear(h, weight)
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        if module.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"bounds support convolutions with padding_mode='zeros' only, got {module.padding_mode!r}"
            )
        conv = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
        return conv(h, weight, None, module.stride, module.padding, module.dilation, module.groups)
    raise UnsupportedLayerError(f"apply_weight: {type(module).__name__} is not a Linear or Conv layer")


def receptive_max(module: nn.Module, a: Tensor) -> Tensor:
    """For each output position of `module`, the largest entry of a >= 0 that it reads, over every channel.

    a: (N, in) for Linear, (N, C, *spatial) for convolutions. Returns (N, 1) for Linear and (N, 1, *out_spatial)
    for convolutions (both broadcast over output features). Used by the operator ball, whose row budget may sit
    on any single input the row reads (Lemma 1).
    """
    if isinstance(module, nn.Linear):
        return a.amax(dim=-1, keepdim=True)
    if not isinstance(module, nn.Conv1d | nn.Conv2d):
        raise UnsupportedLayerError(f"receptive_max: {type(module).__name__} is not a Linear or Conv layer")
    m = a.amax(dim=1, keepdim=True)
    out_spatial = apply_weight(module, a, module.weight.detach().to(a.dtype)).shape[2:]
    if isinstance(module.padding, str):
        # String paddings ('same') have no unfold equivalent; the example's global max is still sound.
        return m.amax(dim=tuple(range(2, m.dim())), keepdim=True).expand(-1, -1, *out_spatial)
    # unfold takes 2-d arguments; a Conv1d is unfolded as a 1 x length image.
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    if isinstance(module, nn.Conv1d):
        m = m.unsqueeze(2)
        kernel, stride = (1, module.kernel_size[0]), (1, module.stride[0])
        padding, dilation = (0, module.padding[0]), (1, module.dilation[0])
    else:
        kernel, stride, padding, dilation = module.kernel_size, module.stride, module.padding, module.dilation
    # Zero padding is harmless: a >= 0, so a padded position never raises the maximum.
    cols = F.unfold(m, kernel, dilation=dilation, padding=padding, stride=stride).amax(dim=1)
    return cols.reshape(a.shape[0], 1, *out_spatial)


def clean_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The unperturbed model's output in x's dtype (parameters cast, never modified), in eval mode.

    Bounds are statements about the eval-mode network; the model's own mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        state = {
            k: v.to(x.dtype) if v.is_floating_point() else v
            for k, v in (*model.named_parameters(), *model.named_buffers())
        }
        logits: Tensor = torch.func.functional_call(model, state, (x,))
        return logits
    finally:
        model.train(was_training)
