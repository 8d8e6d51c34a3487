"""A feed-forward ReLU network as the flat chain the branch and bound works on.

The batched bounding of a search bounds thousands of domains per call; walking the general graph engine
(bounds/engine.py) node by node for each would cost more in Python than in matmuls. So the model is read once
into its maths: an element-wise increasing input map `pre` (Normalize, Flatten), then
z_1 = W_1 h_0 + b_1, h_1 = ReLU(z_1), ..., z_L = W_L h_{L-1} + b_L, in float64, with each layer's threat
(THEORY.md sections 2-3) taken from the one definition in `bounds.layers.layer_threats`.

Accepted: any model torch.fx traces into a single path of Normalize, Flatten (or a flattening reshape), Identity,
Dropout (eval: identity) before the first Linear, then Linear and ReLU alternating, ending with a Linear.
Anything else is an UnsupportedLayerError naming the node.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..bounds.layers import LayerThreat, UnsupportedLayerError, layer_threats
from ..models import Normalize
from ..threat import ThreatModel, WeightBall

__all__ = ["Chain", "ChainLayer", "chain_from_model"]

_PASS = (nn.Identity, nn.Dropout)
_RELU_FUNCS = (torch.relu, F.relu, torch.nn.functional.relu)
_FLATTEN_FUNCS = (torch.flatten,)


@dataclass(frozen=True)
class ChainLayer:
    """One Linear layer of the chain: z = W' h + b' with W' in the layer's weight ball.

    Attributes:
        name: the module's name in `model.named_modules()`.
        weight: (out, in) float64.
        bias: (out,) float64 (zeros when the layer has none).
        threat: the layer's radii in float64, or None when the threat leaves it alone.
    """

    name: str
    weight: Tensor
    bias: Tensor
    threat: LayerThreat | None

    @property
    def rho(self) -> Tensor | None:
        return None if self.threat is None else self.threat.rho

    @property
    def operator_e(self) -> Tensor | None:
        return None if self.threat is None or self.threat.ball is not WeightBall.OPERATOR else self.threat.e

    @property
    def bias_radius(self) -> Tensor | None:
        return None if self.threat is None else self.threat.beta


@dataclass(frozen=True)
class Chain:
    """pre -> (Linear, ReLU) * (L-1) -> Linear, in float64.

    Attributes:
        pre: the modules before the first Linear (each element-wise increasing or a reshape), applied in order.
        layers: the L Linear layers.
        input_shape: the model's input shape without the batch dimension.
    """

    pre: tuple[nn.Module, ...]
    layers: tuple[ChainLayer, ...]
    input_shape: tuple[int, ...]

    @property
    def widths(self) -> list[int]:
        """Widths n_1..n_{L-1} of the ReLU layers."""
        return [int(layer.weight.shape[0]) for layer in self.layers[:-1]]

    @property
    def perturbs_weights(self) -> bool:
        return any(layer.threat is not None for layer in self.layers)

    def cast(self, dtype: torch.dtype) -> Chain:
        """A copy with every weight, bias and radius in `dtype` (for cheap gradient steps; bounds use float64)."""

        def conv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(dtype)

        layers = []
        for layer in self.layers:
            lt = layer.threat
            if lt is not None:
                lt = replace(lt, rho=conv(lt.rho), e=conv(lt.e), beta=conv(lt.beta))
            layers.append(ChainLayer(layer.name, layer.weight.to(dtype), layer.bias.to(dtype), lt))
        return Chain(self.pre, tuple(layers), self.input_shape)

    def h0(self, x: Tensor) -> Tensor:
        """(N, *input_shape) -> (N, n_0): the input map, in x's dtype. Element-wise increasing, so a box
        [lower, upper] maps onto the box [h0(lower), h0(upper)] exactly."""
        out = x
        for module in self.pre:
            if isinstance(module, Normalize):
                mean = module.mean.to(device=out.device, dtype=out.dtype)
                std = module.std.to(device=out.device, dtype=out.dtype)
                out = (out - module._shape(out, mean)) / module._shape(out, std)
        return out.reshape(out.shape[0], -1)

    def forward(self, h0: Tensor, t: list[Tensor] | None = None) -> Tensor:
        """(N, n_0) -> (N, K) logits of the chain on flattened inputs, in h0's dtype.

        t: per layer (N, n_l) in [-1, 1], the Lemma 1 coordinates of a per-example weight perturbation
            (THEORY.md section 3): z'_l = W_l h + b_l + t_l * (r_l(h) + beta_l). None: the clean network.
        """
        h = h0
        for i, layer in enumerate(self.layers):
            z = F.linear(h, layer.weight.to(h.dtype), layer.bias.to(h.dtype))
            if t is not None and layer.threat is not None:
                z = z + t[i] * lemma1_radius(layer, h)
            h = torch.relu(z) if i < len(self.layers) - 1 else z
        return h


def lemma1_radius(layer: ChainLayer, h: Tensor) -> Tensor:
    """(N, out) r_l(h) + beta_l: how far each pre-activation can move when the layer reads h (Lemma 1)."""
    lt = layer.threat
    if lt is None:
        return torch.zeros(h.shape[0], layer.weight.shape[0], dtype=h.dtype)
    if lt.rho is not None:
        r = F.linear(h.abs(), lt.rho.to(h.dtype))
    else:
        r = lt.operator_radius().to(h.dtype) * h.abs().amax(dim=1, keepdim=True).expand(-1, layer.weight.shape[0])
    if lt.beta is not None:
        r = r + lt.beta.to(h.dtype)
    return r


class _Tracer(fx.Tracer):
    """Keeps the project's Normalize a single node (fx would trace into its sub and div)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, Normalize) or super().is_leaf_module(m, module_qualified_name)


def _node_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | str:
    """The module a node stands for, 'relu' / 'flatten' for functional forms, or raise naming the node."""
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))
    if node.op in ("call_function", "call_method"):
        if node.target in _RELU_FUNCS or node.target == "relu":
            return "relu"
        if node.target in _FLATTEN_FUNCS or node.target in ("flatten", "view", "reshape"):
            return "flatten"
        if node.target is operator.getitem:
            raise UnsupportedLayerError(f"branch and bound: node '{node.name}' indexes a tensor; not a chain")
    raise UnsupportedLayerError(
        f"branch and bound needs a chain of Normalize/Flatten, then Linear and ReLU alternating; node "
        f"'{node.name}' ({node.op} {node.target}) is not one (complete/chain.py lists what is accepted)"
    )


def chain_from_model(model: nn.Module, input_shape: tuple[int, ...], threat: ThreatModel | None) -> Chain:
    """Read `model` into a Chain (float64 copies of its parameters; the model is not modified).

    Raises:
        UnsupportedLayerError: the model is not such a chain (the message names the node).
        ValueError: the threat names layers the model does not have.
    """
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as err:  # fx raises many types for untraceable code; report it in one line
        raise UnsupportedLayerError(f"branch and bound could not trace the model: {err}") from err
    with torch.no_grad():  # relative radii would otherwise carry the weights' autograd graph into every bound
        threats = layer_threats(model, threat, torch.float64) if threat is not None else {}
    threats = {
        name: replace(
            lt,
            rho=None if lt.rho is None else lt.rho.detach(),
            e=None if lt.e is None else lt.e.detach(),
            beta=None if lt.beta is None else lt.beta.detach(),
        )
        for name, lt in threats.items()
    }
    pre: list[nn.Module] = []
    layers: list[ChainLayer] = []
    expect_linear = True
    seen_linear = False
    previous: fx.Node | None = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                raise UnsupportedLayerError("branch and bound needs a model with one input")
            previous = node
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                raise UnsupportedLayerError("branch and bound: the model's output is not its last layer")
            break
        tensor_args = [a for a in node.args if isinstance(a, fx.Node)]
        if tensor_args != [previous]:
            raise UnsupportedLayerError(f"branch and bound needs a single path; node '{node.name}' branches")
        kind = _node_module(gm, node)
        if isinstance(kind, nn.Linear):
            if not expect_linear:
                raise UnsupportedLayerError(f"branch and bound: two Linear layers without a ReLU at '{node.name}'")
            name = str(node.target)
            w = kind.weight.detach().to("cpu", torch.float64).clone()
            b = (
                kind.bias.detach().to("cpu", torch.float64).clone()
                if kind.bias is not None
                else torch.zeros(w.shape[0], dtype=torch.float64)
            )
            layers.append(ChainLayer(name, w, b, threats.get(name)))
            expect_linear, seen_linear = False, True
        elif kind == "relu" or isinstance(kind, nn.ReLU):
            if expect_linear:
                raise UnsupportedLayerError(f"branch and bound: ReLU '{node.name}' does not follow a Linear layer")
            expect_linear = True
        elif kind == "flatten" or isinstance(kind, (nn.Flatten, Normalize, *_PASS)):
            if seen_linear:
                if isinstance(kind, Normalize):
                    raise UnsupportedLayerError(f"branch and bound: Normalize '{node.name}' after a Linear layer")
            else:
                pre.append(kind if isinstance(kind, nn.Module) else nn.Flatten())
        else:
            raise UnsupportedLayerError(
                f"branch and bound does not support {type(kind).__name__} ('{node.name}'); it bounds chains of "
                f"Normalize/Flatten, Linear and ReLU"
            )
        previous = node
    if not layers or expect_linear:
        raise UnsupportedLayerError("branch and bound needs a model that ends with a Linear layer")
    known = {layer.name for layer in layers}
    extra = sorted(set(threats) - known)
    if extra:
        raise UnsupportedLayerError(f"the threat perturbs layers {extra} that are not in the chain's Linear layers")
    return Chain(tuple(pre), tuple(layers), tuple(int(s) for s in input_shape))
