"""The attack's forward and input/Lemma 1 gradient for plain MLPs, without the autograd engine.

`PGD`'s loop needs, every step, the logits, the per-example loss and the gradient of the summed loss with
respect to the input and each Lemma 1 coefficient t. For a model that is a plain chain
`[Normalize] [Flatten] (Linear ReLU)* Linear` (`models.MLP`, or an nn.Sequential of those modules with no hooks)
this module computes exactly what autograd computes for the hooked model (`perturbation.WeightBlock.hook`),
with the same operations in the same order, so results are bit-identical (tests/attacks/test_fused_mlp.py), but:

- no autograd graph, hooks or engine bookkeeping per step (the per-step Python and dispatch cost that made
  small MLPs slower than torchattacks' loop);
- the ReLU runs in place on the layer's output, the Lemma 1 term is added in place;
- Lemma 1's input gradient is added in place to the layer's own input gradient (autograd builds it apart and
  then sums the two);
- no weight gradients are ever considered.

Only the loss on the logits goes through autograd (any registered `AttackLoss` works). Anything else (another
architecture, an explicit or shared weight path, an element-wise radius matrix or an operator ball, hooks on
the modules) takes the generic autograd path: `plan` returns None.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..models import Normalize
from ..threat import ThreatModel
from .losses import AttackLoss, per_example
from .perturbation import LayerPath, WeightBlock, build_weight_blocks, lemma1_input_grad, lemma1_radius

__all__ = ["FusedMLP", "plan"]


@dataclass(frozen=True)
class FusedMLP:
    """A recognised MLP: optional normalisation, then Linear layers with ReLUs between them.

    Attributes:
        normalize: the leading Normalize module, or None.
        names: qualified module name of each Linear layer (the keys of the attack's layer paths).
        linears: the Linear layers, in order.
    """

    normalize: Normalize | None
    names: tuple[str, ...]
    linears: tuple[nn.Linear, ...]

    def value_and_grad(
        self,
        x: Tensor,
        blocks: list[WeightBlock],
        objective: AttackLoss,
        y: Tensor,
        clean: Tensor | None,
        input_grad: bool,
        need_grad: bool,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Logits (n, K), per-example loss (n,) and, when `need_grad`, the gradients of the summed loss.

        Args:
            x: (n, *input_shape) the current inputs.
            blocks: the Lemma 1 blocks of this batch (each records the layer input it saw in `h_seen`).
            input_grad: include the input gradient (first in the returned list, shaped like x).
            need_grad: compute gradients at all (False: the loop's final, evaluating pass).

        Returns:
            (logits, losses, grads): grads in the loop's order: [dL/dx if input_grad] + [dL/dt per block].
        """
        by_name = {blk.name: blk for blk in blocks}
        per_layer = [by_name.get(name) for name in self.names]
        with torch.no_grad():
            if self.normalize is not None:
                std = self.normalize._shape(x, self.normalize.std)
                h = (x - self.normalize._shape(x, self.normalize.mean)) / std
            else:
                std, h = None, x
            h = h.flatten(1)
            inputs: list[Tensor] = []
            radii: list[Tensor | None] = []
            last = len(self.linears) - 1
            for i, (layer, blk) in enumerate(zip(self.linears, per_layer, strict=True)):
                inputs.append(h)
                z = torch.addmm(layer.bias, h, layer.weight.t()) if layer.bias is not None else h @ layer.weight.t()
                r = None
                if blk is not None:
                    blk.h_seen = h
                    r = lemma1_radius(blk, h)
                    z.addcmul_(blk.t, r)
                radii.append(r)
                h = z.relu_() if i < last else z
        logits = h
        with torch.enable_grad():
            leaf = logits.detach().requires_grad_(need_grad)
            losses = per_example(objective(leaf, y, clean))
            if not need_grad:
                return logits, losses.detach(), []
            (g,) = torch.autograd.grad(losses.sum(), [leaf])
        grads_t: dict[str, Tensor] = {}
        with torch.no_grad():
            for i in range(last, -1, -1):
                layer, blk, r = self.linears[i], per_layer[i], radii[i]
                if blk is not None and r is not None:  # (r is set exactly where a block is)
                    grads_t[blk.name] = g * r
                if i == 0 and not input_grad:
                    break
                gh = torch.mm(g, layer.weight)
                if blk is not None:
                    lemma1_input_grad(blk, g, inputs[i], blk.t, into=gh)
                if i > 0:  # the ReLU before this layer: zero where its output is 0, in place (as autograd would)
                    torch.ops.aten.threshold_backward.grad_input(gh, inputs[i], 0, grad_input=gh)
                g = gh
            grads = [grads_t[blk.name] for blk in blocks]
            if input_grad:
                gx = g.view(x.shape)
                grads.insert(0, gx / std if std is not None else gx)
        return logits, losses.detach(), grads


def plan(model: nn.Module, paths: dict[str, LayerPath], threat: ThreatModel, x_probe: Tensor) -> FusedMLP | None:
    """The fused plan for `model` when it is a plain MLP whose perturbed layers all take a fusable Lemma 1 path.

    Args:
        model: the attacked model.
        paths: the attack's layer paths (name -> path).
        threat: the attack's threat (the radius form of each block decides whether it fuses).
        x_probe: (n, *input_shape) inputs (only their shape is used).
    """
    if type(model).forward is not nn.Sequential.forward or not isinstance(model, nn.Sequential):
        return None
    if any(_hooked(m) for m in model.modules()) or _global_hooks():
        return None
    children = list(model.named_children())
    normalize: Normalize | None = None
    if children and isinstance(first := children[0][1], Normalize) and type(first) is Normalize:
        normalize = first
        children.pop(0)
    flat = x_probe.dim() == 2
    if children and type(children[0][1]) is nn.Flatten:
        f = children.pop(0)[1]
        flat = bool(f.start_dim == 1 and f.end_dim == -1)
    if not flat or len(children) % 2 != 1:
        return None
    names: list[str] = []
    linears: list[nn.Linear] = []
    for k, (name, module) in enumerate(children):
        if k % 2 == 1:
            if type(module) is not nn.ReLU:
                return None
            continue
        if not isinstance(module, nn.Linear) or type(module) is not nn.Linear:
            return None
        names.append(name)
        linears.append(module)
    known = set(names)
    if any(name not in known or path is not LayerPath.LEMMA1 for name, path in paths.items()):
        return None
    blocks = build_weight_blocks(model, threat, paths, 1)
    if any(blk.uniform_eps is None and blk.row_eps is None for blk in blocks):
        return None
    return FusedMLP(normalize, tuple(names), tuple(linears))


def _hooked(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    )


def _global_hooks() -> bool:
    from torch.nn.modules import module as m

    return bool(
        m._global_forward_hooks
        or m._global_forward_pre_hooks
        or m._global_backward_hooks
        or m._global_backward_pre_hooks
    )
