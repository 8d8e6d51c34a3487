"""A model as a DAG of ops that the bound engine can walk: torch.fx tracing plus one concrete run for shapes.

graph = trace(model, x)     # nodes in execution order, each with its rule, tensor inputs and output shape

Modules with a rule in the registry (rules.py) stay single nodes (a Conv2d, BatchNorm2d, the project's Normalize,
...); everything else is traced through to its functional ops. Values that do not depend on the input tensor
values (x.size(0), shapes, constants) are evaluated once on the clean input and become constants of the node,
so `x.view(x.size(0), -1)` is a reshape node with a fixed output shape.

What cannot be traced (data-dependent Python control flow, e.g. `if x.sum() > 0`) is refused with the fx error
in one line; what traces but has no rule is refused naming the op and rules.py, where a rule would go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from . import ops_affine, ops_nonlinear, ops_structure  # noqa: F401  (they fill the registry)
from .layer_threat import UnsupportedLayerError, sequential_layers
from .registry import Input, Node, find_rule, has_module_rule

__all__ = ["Graph", "trace"]


@dataclass
class Graph:
    """Nodes in execution order; `input` names the placeholder and `output` the node whose value is returned."""

    nodes: list[Node]
    input: str
    output: str
    #: every static argument reads the model's live tensors (no cast or derived copy of a parameter or buffer
    #: was baked in), so the graph stays right after in-place parameter updates and may be reused (plan_cache.py)
    reusable: bool = True
    by_name: dict[str, Node] = field(init=False)
    users: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_name = {n.name: n for n in self.nodes}
        self.users = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                self.users[i].append(n.name)

    def ancestors(self, name: str) -> set[str]:
        """Names of every node `name` depends on, itself included."""
        seen, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(self.by_name[n].inputs)
        return seen


class _Tracer(fx.Tracer):
    """Keeps modules that have a rule as leaves (fx would otherwise trace into Normalize, BatchNorm, ...)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return has_module_rule(m) or super().is_leaf_module(m, qualname)


def _fx_graph(model: nn.Module) -> tuple[fx.Graph, nn.Module]:
    try:
        layers = sequential_layers(model)
    except UnsupportedLayerError:
        layers = None
    if layers is not None and all(has_module_rule(m) for _, m in layers):
        # A plain (nested) Sequential of layers with rules is a chain: no need to trace Python code.
        graph = fx.Graph()
        value = graph.placeholder("x")
        for name, _ in layers:
            value = graph.call_module(name, (value,))
        graph.output(value)
        return graph, model
    try:
        return _Tracer().trace(model), model
    except Exception as err:  # fx raises many types (TraceError, TypeError, RuntimeError...) for the same cause
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsupportedLayerError(
            f"bounds cannot trace {type(model).__name__} with torch.fx ({first}); bounds need a forward without "
            f"data-dependent control flow"
        ) from None


def _map(value: Any, fn: Any) -> Any:
    return fx.node.map_aggregate(value, fn)


def trace(model: nn.Module, x: Tensor) -> tuple[Graph, Tensor]:
    """Trace `model` and run it once on `x` (eval mode, x's dtype) to fix every shape and static value.

    Args:
        model: any module that torch.fx can trace, whose ops all have rules.
        x: (N, *input_shape) a representative input (its values only decide static values such as sizes).

    Returns:
        The graph, and the clean logits (N, K) of that run (differentiable in the model's parameters).

    Raises:
        UnsupportedLayerError: untraceable model, an op without a rule (naming it and rules.py), several inputs,
            or a non-tensor output.
    """
    fx_graph, root = _fx_graph(model)
    modules = dict(root.named_modules())
    placeholders = [n for n in fx_graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedLayerError(
            f"bounds need a model with one input tensor; {type(model).__name__} takes {len(placeholders)}"
        )
    state = {
        k: v.to(x.dtype) if v.is_floating_point() else v for k, v in (*root.named_parameters(), *root.named_buffers())
    }
    env: dict[fx.Node, Any] = {}
    tensor_nodes: set[fx.Node] = set()  # nodes whose value depends on the input tensor's values
    # Static nodes whose value is a copy of, or derived from, a parameter, buffer or attribute: baked into a node's
    # arguments they would not follow later in-place updates of the model (the graph is then not reusable).
    stale: set[fx.Node] = set()
    nodes: list[Node] = []
    output_name = ""
    reusable = True
    modes = [(m, m.training) for m in model.modules()]  # restored one by one: submodules may differ
    model.eval()
    try:
        for n in fx_graph.nodes:
            if n.op == "placeholder":
                env[n] = x
                tensor_nodes.add(n)
                nodes.append(Node(n.name, "input", None, (), None, (), {}, tuple(x.shape[1:])))
                continue
            if n.op == "output":
                out = n.args[0]
                if not isinstance(out, fx.Node) or out not in tensor_nodes:
                    raise UnsupportedLayerError("bounds need a model that returns one tensor of logits")
                output_name = _name(out)
                continue
            if n.op == "get_attr":
                env[n] = _get_attr(root, state, n.target)
                if env[n] is not _get_attr(root, {}, n.target):
                    stale.add(n)
                continue
            args = _map(n.args, lambda a: env[a] if isinstance(a, fx.Node) else a)
            kwargs = _map(n.kwargs, lambda a: env[a] if isinstance(a, fx.Node) else a)
            if n.op == "call_module":
                fn: Any = _cast_module(modules[n.target], x.dtype)
            elif n.op == "call_method":
                fn = getattr(type(args[0]), n.target) if not isinstance(args[0], Tensor) else getattr(Tensor, n.target)
            else:
                fn = n.target
            value = fn(*args, **kwargs)
            env[n] = value
            deps = [a for a in n.all_input_nodes if a in tensor_nodes]
            if not deps:
                if any(a in stale or a.op == "get_attr" for a in n.all_input_nodes):
                    stale.add(n)
                continue  # static: shapes, sizes, constants
            if not isinstance(value, Tensor):
                if _shape_query(n):
                    continue  # x.size(0), x.shape, x.dim(): fixed by the input's shape, not its values
                raise UnsupportedLayerError(
                    f"bounds cannot follow op '{n.name}' ({_describe(n)}): it turns the input's values into "
                    f"a non-tensor"
                )
            if value.dim() == 0 or value.shape[0] != x.shape[0]:
                raise UnsupportedLayerError(
                    f"bounds cannot follow op '{n.name}' ({_describe(n)}): it mixes examples of the batch "
                    f"(output shape {tuple(value.shape)} for {x.shape[0]} examples)"
                )
            tensor_nodes.add(n)
            nodes.append(_make_node(n, modules, env, tensor_nodes, value))
            reusable = reusable and not any(a in stale for a in n.all_input_nodes)
    finally:
        for m, mode in modes:
            m.training = mode
    return Graph(nodes, placeholders[0].name, output_name, reusable), env[out]


def _shape_query(n: fx.Node) -> bool:
    if n.op == "call_method":
        return n.target in ("size", "dim", "numel")
    return n.op == "call_function" and n.target is getattr and n.args[1] in ("shape", "ndim")


def _cast_module(module: nn.Module, dtype: torch.dtype) -> Any:
    """The module as a function with its floating parameters and buffers in `dtype` (the module is not touched)."""
    state = {
        k: v.to(dtype) if v.is_floating_point() else v for k, v in (*module.named_parameters(), *module.named_buffers())
    }
    return lambda *args, **kwargs: torch.func.functional_call(module, state, args, kwargs)


def _get_attr(root: nn.Module, state: dict[str, Tensor], target: str) -> Any:
    if target in state:
        return state[target]
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _name(n: fx.Node) -> str:
    return str(n.target) if n.op == "call_module" else n.name


def _describe(n: fx.Node) -> str:
    if n.op == "call_function":
        return getattr(n.target, "__name__", str(n.target))
    if n.op == "call_method":
        return f"Tensor.{n.target}"
    return str(n.target)


def _make_node(
    n: fx.Node, modules: dict[str, nn.Module], env: dict[fx.Node, Any], tensor_nodes: set[fx.Node], value: Tensor
) -> Node:
    inputs: list[str] = []

    def replace(a: Any) -> Any:
        if not isinstance(a, fx.Node):
            return a
        if a in tensor_nodes:
            inputs.append(_name(a))
            return Input(len(inputs) - 1)
        return env[a]  # static: a size, a shape, or a constant tensor (a buffer read with get_attr)

    args = _map(n.args, replace)
    kwargs = _map(n.kwargs, replace)
    module = modules[str(n.target)] if n.op == "call_module" else None
    key: Any = module if module is not None else (n.target if n.op == "call_function" else f"Tensor.{n.target}")
    fn = module if module is not None else (n.target if n.op == "call_function" else getattr(Tensor, str(n.target)))
    rule = find_rule(key, _name(n), _describe(n))
    kind = type(module).__name__ if module is not None else _describe(n)
    return Node(_name(n), kind, rule, tuple(inputs), module, args, kwargs, tuple(value.shape[1:]), fn)
