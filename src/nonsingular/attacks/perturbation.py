"""Per-layer weight perturbations an attack optimises, and how each enters the forward pass.

Three paths (THEORY.md section 3):
- ``lemma1``: a Linear layer applied once per example, per-example scope. The perturbation is the additive
  pre-activation box t * r(h') with t in [-1, 1]^out; exact, and as cheap as an input perturbation.
- ``explicit``: any other perturbed layer in per-example scope (convolutions, Linear over sequences or called
  more than once): an explicit weight tensor per example, applied by grouped convolution / batched matmul.
- ``shared``: one weight perturbation for every input (shared scope).

Each block adds its term to the layer's output through a temporary forward hook, so the user's module and
parameters are never modified. Every block can materialise the explicit perturbed weights W' = W + D that the
checker re-runs through the ordinary module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..threat import PERTURBABLE_TYPES, PerturbableLayer, Scope, ThreatModel, WeightBall
from . import per_example_conv
from .weight_ball import project_rows_l1, settle_operator_rounding

__all__ = ["LayerPath", "WeightBlock", "build_weight_blocks", "installed", "layer_paths", "per_row"]


class LayerPath(str, Enum):
    LEMMA1 = "lemma1"
    EXPLICIT = "explicit"
    SHARED = "shared"


def layer_paths(model: nn.Module, threat: ThreatModel, x_probe: Tensor) -> dict[str, LayerPath]:
    """Which path each perturbed layer takes, found by one probe forward pass on `x_probe` (2+ examples).

    Lemma 1 needs a Linear layer that sees exactly one (N, in) vector per example and is called once.
    """
    layers = threat.weight_layers(model)
    if not layers:
        return {}
    if threat.scope is Scope.SHARED:
        return {name: LayerPath.SHARED for name, _ in layers}
    calls: dict[str, list[int]] = {name: [] for name, _ in layers}
    handles = []
    for name, module in layers:
        handles.append(module.register_forward_hook(lambda _m, inp, _out, name=name: calls[name].append(inp[0].dim())))
    try:
        with torch.no_grad():
            model(x_probe)
    finally:
        for h in handles:
            h.remove()
    paths = {}
    for name, module in layers:
        once_flat = calls[name] == [2]
        paths[name] = LayerPath.LEMMA1 if isinstance(module, nn.Linear) and once_flat else LayerPath.EXPLICIT
    return paths


def _conv_fn(module: nn.Module) -> Callable[..., Tensor]:
    return F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d


def _apply_weight(module: PerturbableLayer, h: Tensor, delta: Tensor) -> Tensor:
    """The layer's linear map with weight `delta` (no bias) applied to h: shared weights."""
    if isinstance(module, nn.Linear):
        return F.linear(h, delta)
    _check_conv(module)
    return _conv_fn(module)(h, delta, None, module.stride, module.padding, module.dilation, module.groups)


def _apply_weight_per_example(module: PerturbableLayer, h: Tensor, delta: Tensor) -> Tensor:
    """The layer's linear map with a different weight delta[n] for each example h[n]."""
    n = h.shape[0]
    if delta.shape[0] != n:
        raise ValueError(
            f"a per-example weight perturbation met a batch of {h.shape[0]} at a layer that expected {n}: "
            "the model must keep the batch dimension first"
        )
    if isinstance(module, nn.Linear):
        return torch.einsum("n...i,noi->n...o", h, delta)
    _check_conv(module)
    # Grouped convolution: example n's channels form groups of their own, with kernel delta[n].
    g = module.groups
    folded = h.reshape(1, n * h.shape[1], *h.shape[2:])
    kernel = delta.reshape(n * delta.shape[1], *delta.shape[2:])
    out = _conv_fn(module)(folded, kernel, None, module.stride, module.padding, module.dilation, n * g)
    return out.reshape(n, delta.shape[1], *out.shape[2:])


def _check_conv(module: nn.Module) -> None:
    if getattr(module, "padding_mode", "zeros") != "zeros":
        raise ValueError(
            f"weight perturbation of convolutions with padding_mode={module.padding_mode!r} is not "
            "supported; use padding_mode='zeros'"
        )


def _bias_term(module: nn.Module, delta_b: Tensor, out: Tensor, per_example: bool) -> Tensor:
    """Shape a bias perturbation (out,) or (n, out) to broadcast over the layer output.

    Linear layers put features on the last axis; convolutions put channels on axis 1.
    """
    extra = out.dim() - 2
    if isinstance(module, nn.Linear):
        return delta_b.reshape(delta_b.shape[0], *([1] * extra), -1) if per_example else delta_b
    return delta_b.reshape(*delta_b.shape, *([1] * extra)) if per_example else delta_b.reshape(-1, *([1] * extra))


class WeightBlock:
    """The perturbation of one layer's weight (and bias) for one batch of n examples (or shared by all)."""

    def __init__(self, name: str, module: PerturbableLayer, path: LayerPath, threat: ThreatModel, n: int) -> None:
        self.name, self.module, self.path = name, module, path
        self.ball = threat.weight_ball
        weight = module.weight.detach()
        self.weight = weight
        self.bias: Tensor | None = None if module.bias is None else module.bias.detach()
        self.radii = threat.layer_radii(name, weight, self.bias)
        self.e = self.radii.e
        self.bias_rho = self.radii.beta
        # Absolute element-wise radius is one number: r = eps * ||h||_1 needs no matmul (Lemma 1).
        self.uniform_eps = self.radii.uniform
        # Absolute per-channel radii (quantization grids) are one number per row: r = ||h||_1 * eps_row.
        self.row_eps = None if self.radii.row_eps is None else self.radii.row_eps[None, :]
        self.h_seen: Tensor | None = None
        self._h_in: Tensor | None = None  # the layer input `pre_hook` kept from the module's own forward
        self.input_nonnegative = False  # set by build_weight_blocks when a ReLU feeds this layer
        # Whether the hooked forward passes gradients on to the layer's own weight and bias: training through
        # the frozen perturbation needs them; an attack's own blocks differentiate their variables only, and
        # the per-example convolution then skips the weight's and bias's sums over the examples.
        self.differentiates_parameters = True
        out_features = weight.shape[0]
        lead = () if path is LayerPath.SHARED else (n,)
        if path is LayerPath.LEMMA1:
            self.t = torch.zeros(n, out_features, dtype=weight.dtype, device=weight.device)
            self.variables = [self.t]
        else:
            self.delta = torch.zeros(*lead, *weight.shape, dtype=weight.dtype, device=weight.device)
            self.variables = [self.delta]
            if self.bias_rho is not None:
                self.delta_b = torch.zeros(*lead, out_features, dtype=weight.dtype, device=weight.device)
                self.variables.append(self.delta_b)

    @property
    def rho(self) -> Tensor | None:
        """Element-wise radius matrix (None for the operator ball); built on first use only."""
        return self.radii.rho

    def _radius(self) -> Tensor:
        """rho (element-wise ball) or e (operator ball): the one the threat defines for this block."""
        radius = self.rho if self.ball is WeightBall.ELEMENTWISE else self.e
        if radius is None:  # unreachable: __init__ sets the operator radius, `rho` the element-wise one
            raise RuntimeError(f"weight block {self.name} has no radius for the {self.ball.value} ball")
        return radius

    # ------------------------------------------------------------------ optimisation hooks
    def random_start(self, generator: torch.Generator | Callable[[torch.Size], Tensor] | None) -> None:
        """Start uniformly inside the ball: from `generator`, or from a function giving U[0, 1) noise of a shape
        (per-example attacks pass one keyed by global example index, so a start does not depend on sharding)."""
        for v in self.variables:
            if callable(generator):
                u = generator(v.shape)
            else:
                u = torch.rand(v.shape, generator=generator, dtype=v.dtype, device="cpu")
            v.copy_(u.to(v) * 2 - 1)
        if self.path is not LayerPath.LEMMA1:
            self._scale_unit_to_ball()

    def _scale_unit_to_ball(self) -> None:
        """Map variables drawn in [-1, 1] into the threat set."""
        if self.ball is WeightBall.ELEMENTWISE:
            self.delta.mul_(self._radius())
        else:
            cols = self.weight[0].numel()
            self.delta.mul_(self._radius() / cols)  # every row's l1 norm <= e
        if self.bias_rho is not None:
            self.delta_b.mul_(self.bias_rho)

    def directions(self, grads: Sequence[Tensor]) -> list[Tensor]:
        """Steepest-ascent step of each variable at relative step 1 (l_inf: sign x radius; operator rows: the
        whole row budget e on the largest gradient entry); the attack scales them by its step size."""
        if self.path is LayerPath.LEMMA1:
            return [torch.sign(grads[0])]  # t ranges over [-1, 1]: radius 1
        g = grads[0]
        radius = self._radius()
        if self.ball is WeightBall.ELEMENTWISE:
            out = [radius * torch.sign(g)]
        else:
            rows = self.weight.shape[0]
            g2 = g.reshape(*g.shape[: g.dim() - self.weight.dim()], rows, -1)
            idx = g2.abs().argmax(dim=-1, keepdim=True)
            step = torch.zeros_like(g2).scatter_(-1, idx, torch.sign(g2.gather(-1, idx)) * radius)
            out = [step.reshape(self.delta.shape)]
        if self.bias_rho is not None:
            out.append(self.bias_rho * torch.sign(grads[1]))
        return out

    def project_(self) -> None:
        """Put every variable back into the threat set (box clamp; operator rows: l1-ball projection)."""
        if self.path is LayerPath.LEMMA1:
            self.t.clamp_(-1, 1)
            return
        radius = self._radius()
        if self.ball is WeightBall.ELEMENTWISE:
            self.delta.copy_(torch.minimum(torch.maximum(self.delta, -radius), radius))
        else:
            rows = self.weight.shape[0]
            d2 = self.delta.reshape(*self.delta.shape[: self.delta.dim() - self.weight.dim()], rows, -1)
            self.delta.copy_(project_rows_l1(d2, radius).reshape(self.delta.shape))
        if self.bias_rho is not None:
            self.delta_b.copy_(torch.minimum(torch.maximum(self.delta_b, -self.bias_rho), self.bias_rho))

    def ascend(self, grads: Sequence[Tensor], rel_step: float | Tensor) -> None:
        """One steepest-ascent step of size rel_step x radius, then project.

        rel_step: a number, or (n,) per-example step sizes (per-example paths only).
        """
        if self.path is LayerPath.LEMMA1 and not isinstance(rel_step, Tensor):
            # t's radius is 1: sign step and clamp in place (no direction list, no scaled copy); the gradient
            # is the attack's own temporary, so its sign overwrites it rather than taking a new tensor.
            self.t.add_(torch.sign(grads[0], out=grads[0]), alpha=rel_step).clamp_(-1, 1)
            return
        if self.uniform_eps is not None and self.bias_rho is None and not isinstance(rel_step, Tensor):
            # One radius e for every entry: the same step as below (e sign(g) x rel_step, then the box clamp)
            # in two in-place passes over D instead of six (torch.profiler, SmallCNN per-example joint PGD: the
            # multiply, maximum and minimum passes took 13 of 420 ms).
            e = self.uniform_eps
            self.delta.add_(torch.sign(grads[0], out=grads[0]), alpha=e * float(rel_step)).clamp_(-e, e)
            return
        for v, d in zip(self.variables, self.directions(grads), strict=True):
            v.add_(d * per_row(rel_step, v))
        self.project_()

    # ------------------------------------------------------------------ the forward pass
    def radius(self, h: Tensor) -> Tensor:
        """Lemma 1: r(h) with {D h} = box of radius r, plus the bias radius; (n, out)."""
        if self.uniform_eps is not None or self.row_eps is not None:
            return lemma1_radius(self, h)
        if self.ball is WeightBall.ELEMENTWISE:
            r = h.abs() @ self._radius().t()
        else:
            r = self._radius() * h.abs().amax(dim=1, keepdim=True).expand(-1, self.weight.shape[0])
        if self.bias_rho is not None:
            r = r + self.bias_rho
        return r

    def replaces_output(self) -> bool:
        """Whether `hook` computes the layer's output without the module's own (plain layers off Lemma 1)."""
        return self.path is not LayerPath.LEMMA1 and type(self.module) in PERTURBABLE_TYPES

    def pre_hook(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
        """For a layer whose output `hook` replaces: keep the input for `hook` and let the module's own forward
        run on an empty batch. Its output would be thrown away, and computing it is a whole convolution per
        layer and step (~15% of SmallCNN's joint PGD step)."""
        h = inputs[0]
        batched = 4 if isinstance(module, nn.Conv2d) else 3 if isinstance(module, nn.Conv1d) else 2
        if len(inputs) != 1 or h.dim() < batched or (h.dim() != batched and not isinstance(module, nn.Linear)):
            self._h_in = None  # unbatched or unusual input: let the module compute as usual
            return None
        self._h_in = h
        return (h[:0],)

    def hook(self, _module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor:
        h = inputs[0]
        if self._h_in is not None:  # `pre_hook` kept the real input and gave the module an empty batch
            h, self._h_in = self._h_in, None
        self.h_seen = h.detach()
        if self.path is LayerPath.LEMMA1:
            if self.uniform_eps is not None or self.row_eps is not None:
                term: Tensor = _Lemma1Term.apply(out, h, self.t, self)  # type: ignore[no-untyped-call]
                return term
            return torch.addcmul(out, self.t, self.radius(h))
        shared = self.path is LayerPath.SHARED
        apply = _apply_weight if shared else _apply_weight_per_example
        if type(self.module) in PERTURBABLE_TYPES:  # exactly these: their forward is the linear map plus bias
            # One convolution (or product) with W' = W + D, the layer's own output left out of the graph: its
            # backward never runs, and the attack computes with the very W' the checker materialises. Against
            # out + (D applied to h) this saves a whole convolution backward per step (SmallCNN joint PGD ~2x).
            if not shared and per_example_conv.supports(self.module):
                # 2-d convolutions: W + D, the bias and the layouts of the three products inside one op.
                new = per_example_conv.per_example_conv2d(
                    self.module,  # type: ignore[arg-type]
                    h,
                    self.delta,
                    parameter_grads=self.differentiates_parameters,
                )
            else:
                new = apply(self.module, h, self.module.weight + self.delta)
                if self.module.bias is not None:
                    new = new + _bias_term(self.module, self.module.bias, new, per_example=False)
        else:  # a subclass may compute more than the plain op: keep its output and add D's share
            new = out + apply(self.module, h, self.delta)
        if self.bias_rho is not None:
            new = new + _bias_term(self.module, self.delta_b, new, per_example=not shared)
        return new

    # ------------------------------------------------------------------ materialisation
    def materialise(self, rows: slice | Tensor = slice(None)) -> dict[str, Tensor]:
        """Explicit perturbed parameters {'<name>.weight': W', '<name>.bias': b'}.

        Per-example paths give (n, *W.shape); the shared path gives W.shape. Lemma 1 uses the input h' the
        layer saw in the last forward pass: D = diag(t) rho sign(h')^T (operator ball: all of row i's budget on
        argmax |h'_j|), sign(0) = +1. `rows` (a slice or an index tensor) selects examples (per-example paths) so
        that only they are built. W' is W + D as the attack holds D, never clamped into the ball (operator rows
        only lose the excess that rounding alone causes, see `settle_operator_rounding`), so `check_attack` sees any
        perturbation that left it.
        """
        W = self.weight
        if self.path is LayerPath.LEMMA1:
            if self.h_seen is None:
                raise RuntimeError("materialise() needs a forward pass that recorded the layer input")
            h, t = self.h_seen[rows], self.t[rows]
            sign = torch.where(h >= 0, 1.0, -1.0).to(W.dtype)
            if self.ball is WeightBall.ELEMENTWISE:
                # W + (t rho) sign(h)^T in one pass writing one (n, out, in) buffer: the product with +-1 is
                # exact, so addcmul gives the values of W + D with D built apart (fused multiply-add or not).
                rho = self._radius()
                if self.uniform_eps is not None:  # one radius: (n, out, 1) factors, no (n, out, in) temporary
                    rho = rho.reshape(-1)[:1]
                perturbed = torch.addcmul(W, t[:, :, None] * rho, sign[:, None, :])
            else:
                j = h.abs().argmax(dim=1)
                delta = torch.zeros(h.shape[0], *W.shape, dtype=W.dtype, device=W.device)
                col = (t * self._radius()) * sign.gather(1, j[:, None])
                delta.scatter_(2, j[:, None, None].expand(-1, W.shape[0], 1), col[:, :, None])
            delta_b = t * self.bias_rho if self.bias_rho is not None else None
        else:
            picked = slice(None) if self.path is LayerPath.SHARED else rows
            delta = self.delta[picked]
            delta_b = self.delta_b[picked] if self.bias_rho is not None else None
        # No clamping into the ball: the checker must see what the attack applied. Element-wise boxes need
        # none (|D| <= rho implies W + D lies in [W - rho, W + rho] as the dtype rounds, rounding being
        # monotone); operator rows are settled only where rounding alone took them out.
        if not (self.path is LayerPath.LEMMA1 and self.ball is WeightBall.ELEMENTWISE):
            perturbed = delta.add_(W) if self.path is LayerPath.LEMMA1 else W + delta  # Lemma 1's delta is ours
        if self.e is not None:
            perturbed = settle_operator_rounding(W, perturbed, self.e)
        out = {f"{self.name}.weight": perturbed}
        if delta_b is not None and self.bias is not None:  # the threat perturbs only biases that exist
            out[f"{self.name}.bias"] = self.bias + delta_b
        return out


def lemma1_radius(block: WeightBlock, h: Tensor) -> Tensor:
    """r(h) = ||h||_1 x scale (+ bias radius), (n, 1) or (n, out), for a block with a uniform or per-row radius.

    A ReLU's output needs no abs (and its gradient no sign(h) product): ~6% of a joint attack on MLPs.
    abs().sum() rather than linalg.vector_norm(h, 1): the same value and subgradient, but torch's CPU p-norm
    reduction is ~4x slower than abs + sum at these sizes (benchmarks/profile_joint.py).
    """
    scale = block.uniform_eps if block.uniform_eps is not None else block.row_eps
    if scale is None:
        raise RuntimeError(f"weight block {block.name} has neither a uniform nor a per-row radius")
    l1 = h.sum(dim=1, keepdim=True) if block.input_nonnegative else h.abs().sum(dim=1, keepdim=True)
    r = l1 * scale
    return r if block.bias_rho is None else r + block.bias_rho


def lemma1_input_grad(block: WeightBlock, g: Tensor, h: Tensor, t: Tensor, into: Tensor | None = None) -> Tensor:
    """The input gradient of the Lemma 1 term t * lemma1_radius(h) given dL/d(out) = g (n, out) and t (n, out).

    sum_o g t scale per row, broadcast over h (times sign(h) where h may be negative: abs's subgradient, 0 at 0).
    With `into` (n, in), it is added to `into` in place (the layer's own input gradient) and `into` returned;
    else an expanded view (n, in) is returned, which autograd adds to the layer's input gradient.
    """
    scale = block.uniform_eps if block.uniform_eps is not None else block.row_eps
    if isinstance(scale, Tensor):  # per-row radii (1, out)
        grad_l1 = torch.mv(g * t, scale[0])[:, None]
    else:
        grad_l1 = torch.linalg.vecdot(g, t, dim=1)[:, None] * scale
    if into is None:
        return grad_l1.expand(h.shape) if block.input_nonnegative else grad_l1 * torch.sign(h)
    return into.add_(grad_l1) if block.input_nonnegative else into.addcmul_(grad_l1, torch.sign(h))


class _Lemma1Term(torch.autograd.Function):
    """out + t * r(h) for a block with a uniform or per-row radius (`lemma1_radius`), hand-differentiated.

    The same value and (sub)gradients as autograd through the radius and addcmul, in fewer passes over
    (n, out) tensors: autograd's addcmul backward multiplies t by 1 and g by both factors, then reduces; here
    dL/dt = g r is one product and dL/d||h||_1 one row dot (`lemma1_input_grad`). First order only, as the
    attack and the training objectives need.
    """

    @staticmethod
    def forward(ctx: Any, out: Tensor, h: Tensor, t: Tensor, block: WeightBlock) -> Tensor:
        r = lemma1_radius(block, h)
        ctx.block = block
        ctx.save_for_backward(h, t, r)
        return torch.addcmul(out, t, r)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        h, t, r = ctx.saved_tensors
        grad_h = lemma1_input_grad(ctx.block, g, h, t) if ctx.needs_input_grad[1] else None
        grad_t = g * r if ctx.needs_input_grad[2] else None
        return g, grad_h, grad_t, None


def per_row(step: float | Tensor, v: Tensor) -> float | Tensor:
    """A step size broadcast over v: a number as is, an (n,) tensor of per-example steps as (n, 1, ..., 1)."""
    if isinstance(step, Tensor):
        return step.to(v.dtype).reshape(-1, *([1] * (v.dim() - 1)))
    return step


def build_weight_blocks(
    model: nn.Module, threat: ThreatModel, paths: dict[str, LayerPath], n: int, differentiates_parameters: bool = True
) -> list[WeightBlock]:
    """One block per perturbed layer, for n examples (0 in shared scope). `differentiates_parameters` False: the
    hooked forward passes no gradient to the layers' own weights and biases (an attack's working blocks)."""
    modules = dict(model.named_modules())
    after_relu = _fed_by_relu(model)
    blocks = []
    for name, path in paths.items():
        module = modules[name]
        if not isinstance(module, PERTURBABLE_TYPES):
            raise TypeError(f"layer '{name}' is a {type(module).__name__}; only Linear and Conv layers have paths")
        block = WeightBlock(name, module, path, threat, n)
        block.input_nonnegative = name in after_relu
        block.differentiates_parameters = differentiates_parameters
        blocks.append(block)
    return blocks


def _fed_by_relu(model: nn.Module) -> set[str]:
    """Names of layers whose input is, by construction, the output of a ReLU used by nothing else: the next
    layer after nn.ReLU (and shape-only nn.Flatten) in an nn.Sequential chain. There ||h||_1 = sum(h), and the
    l1 norm's subgradient at h = 0 never reaches the input (the ReLU's backward zeroes those entries)."""
    found: set[str] = set()
    for prefix, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        relu_before = False
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                relu_before = True
                continue
            if relu_before and isinstance(child, nn.Linear):
                found.add(f"{prefix}.{child_name}" if prefix else child_name)
            if not isinstance(child, nn.Flatten):
                relu_before = False
    return found


@contextlib.contextmanager
def installed(blocks: Sequence[WeightBlock]) -> Iterator[None]:
    """Temporarily route each block's layer output through its hook; always removed on exit."""
    handles = [b.module.register_forward_pre_hook(b.pre_hook) for b in blocks if b.replaces_output()]
    handles += [b.module.register_forward_hook(b.hook) for b in blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
