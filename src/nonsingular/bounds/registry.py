"""The one table of bound rules: op -> Rule object carrying its interval rule and its CROWN backward rule.

An op is a module type (looked up along the class hierarchy; a subclass that overrides `forward` needs its own
rule), a function (operator.add, torch.cat, F.relu, ...) or a tensor method ("Tensor.view"). Rules live in
ops_affine.py (weight layers and element-wise affine maps), ops_structure.py (shape ops, sums, concatenation,
average pooling) and ops_nonlinear.py (ReLU, max-pooling); add a rule next to its kind and `register_rule` it.
A box function alone is registered the same way, wrapped in `IntervalOnlyRule`: such ops get IBP but not CROWN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .layer_threat import LayerThreat, UnsupportedLayerError

__all__ = [
    "DEFAULT_MEMORY_MB",
    "RULES",
    "Backward",
    "Box",
    "Input",
    "IntervalOnlyRule",
    "IntervalRule",
    "Node",
    "Rule",
    "call",
    "dot",
    "find_rule",
    "register_ibp_rule",
    "register_rule",
]

Box = tuple[Tensor, Tensor]
#: rule(module, lb, ub, layer_threat) -> (lb, ub); layer_threat is None for layers the threat leaves alone.
IntervalRule = Callable[[nn.Module, Tensor, Tensor, LayerThreat | None], Box]

_WHERE = (
    "src/nonsingular/bounds/ops_structure.py (shape ops, sums, pooling), ops_affine.py (weight layers) or "
    "ops_nonlinear.py (activations)"
)


@dataclass(frozen=True)
class Input:
    """Placeholder for the i-th tensor input inside a node's args."""

    index: int


#: Default budget for the coefficient tensors of one CROWN chunk, in MiB.
DEFAULT_MEMORY_MB = 256.0


@dataclass
class Backward:
    """State of one backward pass that rules may read: alpha-CROWN's lower ReLU slopes.

    Attributes:
        alphas: (scope, ReLU node name) -> (N, S, *shape) lower slopes in [0, 1], created on first use from
            CROWN's choice when `optimise` is set; empty and unused otherwise. Each backward pass (the final
            margins, and every chunk of every tightened node) has its own slopes.
        optimise: whether ReLU rules take their lower slope from `alphas`.
        memory_mb: budget a rule may spend on an optional tighter term.
        scope: which backward pass is running (set by GraphBounds).
        rows: node name -> the (N, S) entries CROWN tightens there (GraphBounds.tighten), kept so that every
            alpha-CROWN step bounds the same rows with the same slopes, whatever its boxes.
    """

    optimise: bool = False
    alphas: dict[tuple[Any, ...], Tensor] = field(default_factory=dict)
    memory_mb: float = DEFAULT_MEMORY_MB
    scope: tuple[Any, ...] = ()
    rows: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def alpha(self, name: str, default: Tensor, unstable: Tensor) -> Tensor | None:
        """The optimised lower slopes of ReLU `name` (default (N, 1, *shape) is CROWN's), or None for CROWN's."""
        if not self.optimise:
            return None
        key = (*self.scope, name)
        if key not in self.alphas:
            self.alphas[key] = default.detach().clone().requires_grad_(True)
        return self.alphas[key]


@dataclass(frozen=True)
class Node:
    """One op of the traced model.

    Attributes:
        name: fx node name (for call_module nodes: the module's qualified name, as in `named_modules()`).
        kind: what the op is, for messages (module class name, function name or "Tensor.<method>").
        rule: the op's bound rule; None for the input placeholder.
        inputs: names of the nodes whose tensors this op reads, in argument order.
        module: the module for call_module nodes, else None.
        args, kwargs: the call's arguments with tensor inputs replaced by `Input(i)` and static values resolved.
        shape: output shape without the batch dimension.
        fn: what computes the op: the module, the function, or the unbound Tensor method.
    """

    name: str
    kind: str
    rule: Rule | None
    inputs: tuple[str, ...]
    module: nn.Module | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    shape: tuple[int, ...]
    fn: Any = None


def dot(a: Tensor, v: Tensor) -> Tensor:
    """(N, S) sum over one example's entries of a (B, S, *shape) times v (N, *shape), B in {1, N}."""
    if a.shape[0] == 1:
        return v.flatten(1) @ a[0].flatten(1).T
    return (a.flatten(2) @ v.flatten(1).unsqueeze(-1)).squeeze(-1)


def call(node: Node, tensors: list[Tensor]) -> Tensor:
    """Run the node's op on `tensors` in place of its tensor inputs (static arguments as traced)."""

    def sub(v: Any) -> Any:
        return tensors[v.index] if isinstance(v, Input) else v

    mapper: Any = fx.node.map_aggregate
    out: Tensor = node.fn(*mapper(node.args, sub), **mapper(node.kwargs, sub))
    return out


class Rule:
    """How to bound one op. Subclasses override `ibp` and, for CROWN, `backward`.

    Attributes:
        exact_box: the interval rule maps an exact box to an exact box (element-wise monotone maps, reshapes), so
            CROWN never needs to tighten the output of such an op when its inputs are exact.
        needs_bounds: the backward rule relaxes a non-linearity over its input's box (CROWN tightens that box).
        elementwise: one input, mapped entry by entry (or relabelled): the image of a box is a box.
    """

    exact_box: bool = False
    needs_bounds: bool = False
    elementwise: bool = False

    def exact_on_box(self, lt: LayerThreat | None) -> bool:
        """Whether the interval rule is exact (each output entry's true range) when the input's range is a box:
        an affine map the threat leaves alone. CROWN then never tightens the output of such an op on the input."""
        return False

    def exact_on_point(self, lt: LayerThreat | None) -> bool:
        """Whether the interval rule gives each output entry's true range when every input is a single point
        (lb == ub, e.g. the first layer under a weight-only threat). CROWN then never tightens that output."""
        return self.exact_on_box(lt)

    def relaxed_entries(self, lb: Tensor, ub: Tensor) -> Tensor | None:
        """(N, *shape) the entries of the input box [lb, ub] whose bounds can change this op's results (its
        relaxation or its output box); CROWN tightens only those. None: all of them. Read when `needs_bounds`."""
        return None

    def ibp(self, node: Node, boxes: list[Box], lt: LayerThreat | None) -> Box:
        """A box containing every output for inputs in `boxes` (one (lb, ub) per tensor input, each (N, *shape))."""
        raise NotImplementedError

    def backward(
        self, node: Node, a: Tensor, boxes: list[Box], lt: LayerThreat | None, ctx: Backward
    ) -> tuple[list[Tensor | None], Tensor | float]:
        """Carry a linear lower bound a . out + c back to the inputs.

        Args:
            a: (B, S, *node.shape) coefficients, B = 1 (shared by every example) or N.
            boxes: boxes of the node's inputs (N, *input_shape).
            lt: the threat at this layer (weight layers only).
            ctx: the backward pass (alpha slopes, the spec row count).

        Returns:
            One coefficient tensor (B', S, *input_shape) per tensor input (None when the op ignores it) and an
            offset broadcastable to (N, S), such that a . out >= sum_i a_i . in_i + offset for every output the
            threat allows given inputs in their boxes.
        """
        raise UnsupportedLayerError(
            f"CROWN has no backward rule for op '{node.name}' ({_kind(node)}); add one to a Rule in {_WHERE}, "
            f"or use method='ibp'"
        )

    def backward_patches(
        self, node: Node, a: Any, boxes: list[Box], lt: LayerThreat | None, ctx: Backward
    ) -> tuple[list[Any], Tensor | float] | None:
        """`backward` for patch coefficients (patches.Patches on this node's (C, H, W) output), returning patches
        or dense coefficients per input; None when the rule has no patch form (the engine passes dense ones)."""
        return None

    def backward_rows(
        self, node: Node, index: Tensor, boxes: list[Box], lt: LayerThreat | None, ctx: Backward
    ) -> tuple[list[Any], Tensor | float]:
        """`backward` for the spec rows e_i (i in index) followed by -e_i: the rows that tighten this node's box.

        index: (N, R) flat indices into one example's output entries. Override where the one-hot rows make a
        cheaper rule (a Linear's rows are rows of its weight); this default builds them and calls `backward`.
        """
        n, r = index.shape
        spec = boxes[0][0].new_zeros((n, 2 * r, math.prod(node.shape)))
        ones = torch.ones_like(index, dtype=spec.dtype)[:, :, None]
        spec[:, :r].scatter_(2, index[:, :, None], ones)
        spec[:, r:].scatter_(2, index[:, :, None], -ones)
        return self.backward(node, spec.reshape(n, 2 * r, *node.shape), boxes, lt, ctx)


class IntervalOnlyRule(Rule):
    """The rule of a module type known only by a box function `fn(module, lb, ub, layer_threat) -> (lb, ub)`
    (e.g. a monotone activation: `(torch.tanh(lb), torch.tanh(ub))`): IBP bounds it, CROWN refuses it (it has no
    linear relaxation) with the error that names the file to add one to."""

    def __init__(self, fn: IntervalRule) -> None:
        self.fn = fn

    def ibp(self, node: Node, boxes: list[Box], lt: LayerThreat | None) -> Box:
        module: Any = node.module
        return self.fn(module, *boxes[0], lt)


#: op -> rule: module types, functions and "Tensor.<method>" names. The one table every bound reads.
RULES: dict[Any, Rule] = {}


def register_rule(op: Any, rule: Rule) -> None:
    """Bound `op` (a module type, a function, or "Tensor.<method>") with `rule`: IBP through `rule.ibp`, CROWN
    and alpha-CROWN through `rule.backward`. A box function alone: `register_rule(op, IntervalOnlyRule(fn))`."""
    RULES[op] = rule


_warned_ibp_rule = False


def register_ibp_rule(layer_type: type[nn.Module], rule: IntervalRule) -> None:
    """Deprecated: `register_rule(layer_type, IntervalOnlyRule(rule))`, which this calls (warning once)."""
    global _warned_ibp_rule
    if not _warned_ibp_rule:  # once per process, as nonsingular's other deprecated names do
        _warned_ibp_rule = True
        warnings.warn(
            "nonsingular.bounds.register_ibp_rule is deprecated: use "
            "register_rule(layer_type, IntervalOnlyRule(rule)), the one table of bound rules",
            DeprecationWarning,
            stacklevel=2,
        )
    register_rule(layer_type, IntervalOnlyRule(rule))


def _kind(node: Node) -> str:
    return node.kind


def _module_rule(module: nn.Module) -> Rule | None:
    for cls in type(module).__mro__:
        if cls in RULES:
            if type(module).forward is not getattr(cls, "forward", None):
                return None
            return RULES[cls]
    return None


def has_module_rule(module: nn.Module) -> bool:
    """Whether tracing should keep `module` as one node (it or a base class it does not override has a rule)."""
    return any(cls in RULES for cls in type(module).__mro__[:-1])


def find_rule(op: Any, name: str, kind: str) -> Rule:
    """The rule for `op` (a module instance, a function or "Tensor.<method>").

    Raises:
        UnsupportedLayerError: no rule; the message names the op and the file to add one to.
    """
    rule = _module_rule(op) if isinstance(op, nn.Module) else RULES.get(op)
    if rule is not None:
        return rule
    if isinstance(op, nn.Module):
        kind = type(op).__name__
        hint = " (it overrides the forward of a supported base class)" if has_module_rule(op) else ""
    else:
        hint = ""
    raise UnsupportedLayerError(
        f"no bound rule for op '{name}' ({kind}){hint}; add a Rule for it in {_WHERE} and register it with "
        f"nonsingular.bounds.register_rule (a box function alone: register_rule(op, IntervalOnlyRule(fn)))"
    )
