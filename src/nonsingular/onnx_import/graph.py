"""The ONNX graph as the importer needs it: one float input with a batch dimension, one output, the nodes that
output depends on in topological order, and the initializers decoded. Every structural fault (a cycle, a name
nothing defines, a name defined twice, a second input, a dynamic dimension) is refused here, before conversion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .errors import OnnxImportError, quote, show
from .loader import MAX_ACTIVATION, Budget, tensor_array

__all__ = ["MAX_OPSET", "MIN_OPSET", "GraphSpec", "node_label", "read_graph"]

#: The default-domain opsets the converters are written and tested for.
MIN_OPSET, MAX_OPSET = 7, 21
#: The most dimensions a model input may have (images with a batch dimension have 4).
MAX_RANK = 8
#: The most nodes a graph may have (each is run on example inputs while importing; ResNet-50 has about 200).
MAX_NODES = 2**16


@dataclass
class GraphSpec:
    """A validated ONNX graph.

    Attributes:
        opset: the model's default-domain ("" / "ai.onnx") opset version.
        input_name: the graph input the model's tensor is fed to.
        input_shape: the shape of one example (the graph's input shape without its leading batch dimension).
        output_name: the graph output the logits are read from.
        nodes: the nodes the output depends on, in an order where every node follows its inputs' producers.
        constants: initializers by name, decoded (float32 / int64 / int32).
        consumers: for each value name, how many nodes (plus the graph output) read it.
        model_dir: the folder of the model file (where external data may lie).
        where: how messages name the model (its path).
        budget: what the model's constants may still allocate.
    """

    opset: int
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    nodes: list[onnx.NodeProto]
    constants: dict[str, np.ndarray]
    consumers: dict[str, int]
    model_dir: Path
    where: str
    budget: Budget


def node_label(node: onnx.NodeProto, opset: int) -> str:
    """How messages name a node: op type, node name (or its first output), opset."""
    if node.name:
        return f"{show(node.op_type)} node {quote(node.name)} (opset {opset})"
    name = f"output {quote(node.output[0])}" if node.output else "unnamed"
    return f"{show(node.op_type)} node, {name} (opset {opset})"


def _opset(model: onnx.ModelProto, where: str) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise OnnxImportError(f"{where}: the model imports no default-domain ('ai.onnx') opset")
    opset = int(versions[0])
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxImportError(f"{where}: opset {opset} is not supported (opsets {MIN_OPSET} to {MAX_OPSET})")
    return opset


def _input(graph: onnx.GraphProto, initializers: set[str], where: str) -> tuple[str, tuple[int, ...]]:
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise OnnxImportError(f"{where}: the graph has {len(inputs)} inputs {[v.name for v in inputs]}; one is needed")
    value = inputs[0]
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type" or value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        elem = value.type.tensor_type.elem_type if kind == "tensor_type" else None
        got = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else str(kind)
        raise OnnxImportError(f"{where}: input {value.name!r} is {got}, not a float32 tensor")
    if not value.type.tensor_type.HasField("shape"):
        raise OnnxImportError(f"{where}: input {value.name!r} has no declared shape")
    dims = list(value.type.tensor_type.shape.dim)
    if not dims:
        raise OnnxImportError(f"{where}: input {value.name!r} is a scalar; a leading batch dimension is needed")
    if len(dims) > MAX_RANK:
        raise OnnxImportError(f"{where}: input {value.name!r} has {len(dims)} dimensions (at most {MAX_RANK})")
    first = dims[0]
    if first.HasField("dim_value") and first.dim_value != 1:
        raise OnnxImportError(
            f"{where}: input {value.name!r} has leading dimension {first.dim_value}; the importer needs a batch "
            f"dimension of 1 (or symbolic) first"
        )
    shape = []
    for k, d in enumerate(dims[1:], start=1):
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise OnnxImportError(
                f"{where}: input {value.name!r} dimension {k} is dynamic ({d.dim_param or '?'}); only the batch "
                f"dimension may be"
            )
        shape.append(int(d.dim_value))
    if math.prod(shape) > MAX_ACTIVATION:
        raise OnnxImportError(f"{where}: input shape {shape} is over the importer's limit of {MAX_ACTIVATION} entries")
    return value.name, tuple(shape)


def _producers(graph: onnx.GraphProto, defined: set[str], where: str) -> dict[str, onnx.NodeProto]:
    producers: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        for out in node.output:
            if not out:
                continue  # an optional output left unnamed
            if out in defined or out in producers:
                raise OnnxImportError(
                    f"{where}: value {quote(out)} is defined twice (again by {show(node.op_type)} {quote(node.name)})"
                )
            producers[out] = node
    return producers


def _toposort(
    graph: onnx.GraphProto, producers: dict[str, onnx.NodeProto], defined: set[str], where: str
) -> list[onnx.NodeProto]:
    """Every node, each after its inputs' producers (depth-first; a cycle or an undefined name is refused, even
    in a part of the graph the output does not need)."""
    order: list[onnx.NodeProto] = []
    state: dict[int, int] = {}  # id(node) -> 1 while on the stack, 2 when done
    stack: list[tuple[onnx.NodeProto, int]] = []

    def visit(name: str, user: str) -> None:
        if name in defined:
            return
        node = producers.get(name)
        if node is None:
            raise OnnxImportError(f"{where}: value {name!r} read by {user} is defined by no node, input or initializer")
        mark = state.get(id(node), 0)
        if mark == 1:
            raise OnnxImportError(
                f"{where}: the graph has a cycle through {show(node.op_type)} {quote(node.name)} ({quote(name)})"
            )
        if mark == 0:
            state[id(node)] = 1
            stack.append((node, 0))

    for root in graph.node:
        if state.get(id(root), 0):
            continue
        state[id(root)] = 1
        stack.append((root, 0))
        while stack:  # iterative, so a deep (or hostile) graph cannot exhaust Python's recursion limit
            node, k = stack.pop()
            inputs = [i for i in node.input if i]
            if k < len(inputs):
                stack.append((node, k + 1))
                visit(inputs[k], f"{show(node.op_type)} {quote(node.name)}")
            else:
                state[id(node)] = 2
                order.append(node)
    return order


def _needed(order: list[onnx.NodeProto], output: str) -> list[onnx.NodeProto]:
    """The nodes of `order` that the output depends on (dead branches are not converted)."""
    wanted = {output}
    kept = []
    for node in reversed(order):
        if any(o in wanted for o in node.output if o):
            kept.append(node)
            wanted.update(i for i in node.input if i)
    return kept[::-1]


def read_graph(model: onnx.ModelProto, model_dir: Path, where: str) -> GraphSpec:
    """Validate `model`'s graph and decode the initializers the output depends on.

    Args:
        model: the parsed model.
        model_dir: the model file's folder (external data must lie inside it).
        where: how messages name the model (its path).
        budget: what the model's constants may still allocate.
    """
    opset = _opset(model, where)
    graph = model.graph
    if len(graph.node) > MAX_NODES:
        raise OnnxImportError(f"{where}: {len(graph.node)} nodes is over the importer's limit of {MAX_NODES}")
    if len(graph.sparse_initializer):
        raise OnnxImportError(f"{where}: sparse initializers are not supported")
    init_names = [t.name for t in graph.initializer]
    if len(set(init_names)) != len(init_names):
        raise OnnxImportError(f"{where}: two initializers share a name")
    input_name, input_shape = _input(graph, set(init_names), where)
    if len(graph.output) != 1:
        raise OnnxImportError(f"{where}: the graph has {len(graph.output)} outputs; one (the logits) is needed")
    output = graph.output[0].name
    defined = {input_name, *init_names}
    producers = _producers(graph, defined, where)
    if output not in producers:
        raise OnnxImportError(f"{where}: the graph output {output!r} is not computed by any node")
    nodes = _needed(_toposort(graph, producers, defined, where), output)
    needed = {i for n in nodes for i in n.input if i}
    budget = Budget()
    constants = {
        t.name: tensor_array(t, model_dir, f"{where}: initializer {t.name!r}", budget)
        for t in graph.initializer
        if t.name in needed
    }
    consumers: dict[str, int] = {output: 1}
    for n in nodes:
        for i in n.input:
            if i:
                consumers[i] = consumers.get(i, 0) + 1
    return GraphSpec(opset, input_name, input_shape, output, nodes, constants, consumers, model_dir, where, budget)
