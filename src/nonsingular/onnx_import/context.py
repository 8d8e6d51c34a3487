"""The state of one conversion and the view of it a converter gets for one node.

Tensor values are carried as example activations of a batch of three random examples, so every shape is known
exactly (a `Shape` node folds to a constant) and each emitted module is checked, as it is emitted, to treat the
examples of a batch independently: the ONNX graph describes one example (batch dimension 1), and the module
must return, for a batch, the stack of the graph's answers on each example.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from .errors import OnnxImportError, quote
from .graph import GraphSpec, node_label
from .loader import MAX_ACTIVATION, MAX_ELEMENTS, tensor_array

__all__ = ["Conversion", "NodeContext", "ParamSource", "Step"]

#: Examples carried through the conversion: enough to see a module mix the examples of a batch.
_EXAMPLES = 3
#: The most activation entries (all examples) alive at once during the conversion: 1 GiB of float32.
MAX_LIVE = 2**28


@dataclass
class Step:
    """One module of the result: its name, the value names it reads, the value name it writes, and the shapes
    of one example of each input (for rewrites after the conversion)."""

    name: str
    module: nn.Module
    inputs: list[str]
    output: str
    shapes: list[tuple[int, ...]] = field(default_factory=list)


@dataclass
class ParamSource:
    """Where a module parameter came from: parameter = (initializer, transposed if `transpose`) * `scale`, its
    columns then reordered so that parameter[:, columns] is that (when `columns` is set); `dims` are the
    initializer's. What an export of changed weights back into the file inverts."""

    initializer: str
    dims: tuple[int, ...]
    transpose: bool = False
    scale: float = 1.0
    columns: Tensor | None = None


@dataclass
class Conversion:
    """What the converted part of the graph has produced so far."""

    spec: GraphSpec
    constants: dict[str, np.ndarray]
    values: dict[str, Tensor]  # tensor value name -> example activations (_EXAMPLES, *shape of one example)
    steps: list[Step] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    absorbed: set[int] = field(default_factory=set)  # id() of nodes a converter fused into an earlier module
    consumers_of: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # value name -> the tensor value it equals
    pending: dict[str, int] = field(default_factory=dict)  # value name -> reads not yet converted
    sources: dict[int, dict[str, ParamSource]] = field(default_factory=dict)  # id(module) -> param -> source

    def release(self, node: onnx.NodeProto) -> None:
        """Drop the example activations no node still to be converted reads (the output is kept)."""
        for name in node.input:
            if name in self.pending:
                self.pending[name] -= 1
                if self.pending[name] <= 0 and name != self.spec.output_name:
                    self.values.pop(name, None)

    def live_entries(self) -> int:
        """Entries of the example activations held now (a tensor held under two names counts once)."""
        return sum(t.numel() for t in {id(t): t for t in self.values.values()}.values())

    def resolve(self, name: str) -> str:
        """The tensor value a name stands for (through Identity-like aliases)."""
        while name in self.aliases:
            name = self.aliases[name]
        return name

    @classmethod
    def start(cls, spec: GraphSpec, seed: int = 0) -> Conversion:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((_EXAMPLES, *spec.input_shape), generator=g)
        conv = cls(spec, dict(spec.constants), {spec.input_name: x})
        for node in spec.nodes:
            for i in node.input:
                if i:
                    conv.consumers_of.setdefault(i, []).append(node)
                    conv.pending[i] = conv.pending.get(i, 0) + 1
        return conv

    def unique_name(self, hint: str) -> str:
        """`hint` as a valid, unused module name (ONNX names may hold '.', '/', ':' or start with a digit)."""
        base = re.sub(r"[^0-9A-Za-z_]", "_", hint[:64]).strip("_") or "layer"
        if base[0].isdigit():
            base = f"n{base}"
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name


def _broadcast_shape(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise OnnxImportError(f"shapes {list(shapes)} do not broadcast") from None


class NodeContext:
    """One node's inputs, attributes and outputs, and the ways a converter records its result."""

    def __init__(self, conv: Conversion, node: onnx.NodeProto) -> None:
        self.conv = conv
        self.node = node
        self.opset = conv.spec.opset
        self.label = f"{conv.spec.where}: {node_label(node, self.opset)}"

    # --- refusals -------------------------------------------------------------------------------------------
    def error(self, problem: str) -> OnnxImportError:
        """An OnnxImportError naming this node: raise ctx.error('...')."""
        return OnnxImportError(f"{self.label}: {problem}")

    # --- attributes -----------------------------------------------------------------------------------------
    def attrs(self, *known: str) -> dict[str, Any]:
        """The node's attributes by name; an attribute not in `known` is refused (its meaning would be lost)."""
        out: dict[str, Any] = {}
        for a in self.node.attribute:
            if a.name not in known:
                raise self.error(f"attribute {quote(a.name)} is not supported")
            if a.type == onnx.AttributeProto.TENSOR:
                what = f"{self.label}: attribute {quote(a.name)}"
                out[a.name] = tensor_array(a.t, self.conv.spec.model_dir, what, self.conv.spec.budget)
            elif a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise self.error(f"attribute {quote(a.name)} holds a subgraph, which is not supported")
            else:
                value = onnx.helper.get_attribute_value(a)
                if isinstance(value, bytes):
                    value = value.decode("utf-8", errors="replace")
                elif isinstance(value, list | tuple):
                    value = list(value)
                out[a.name] = value
        return out

    # --- inputs ---------------------------------------------------------------------------------------------
    def input(self, k: int) -> str:
        """The name of input k ('' when absent)."""
        return self.node.input[k] if k < len(self.node.input) else ""

    def is_const(self, k: int) -> bool:
        return self.input(k) in self.conv.constants

    def const(self, k: int, what: str = "") -> np.ndarray:
        """Input k's constant value; refused when it depends on the model's input (a dynamic value)."""
        name = self.input(k)
        if name not in self.conv.constants:
            raise self.error(f"input {k} ({what or name!r}) must be a constant, but it depends on the model input")
        return self.conv.constants[name]

    def tensor(self, k: int) -> str:
        """Input k's name, which must be a tensor value (it depends on the model's input)."""
        name = self.input(k)
        if name not in self.conv.values:
            raise self.error(f"input {k} ({name!r}) must depend on the model input (a constant here is unsupported)")
        return name

    def shape(self, k: int) -> tuple[int, ...]:
        """The shape of input k for one example: a tensor value's ONNX shape (batch dimension 1), or a constant's."""
        name = self.input(k)
        if name in self.conv.values:
            return (1, *self.conv.values[name].shape[1:])
        if name in self.conv.constants:
            return tuple(self.conv.constants[name].shape)
        raise self.error(f"input {k} is missing")

    # --- outputs --------------------------------------------------------------------------------------------
    @property
    def output(self) -> str:
        return str(self.node.output[0])

    def check_unused_outputs(self, n_used: int = 1) -> None:
        """Refuse optional outputs beyond the first `n_used` that something reads (e.g. MaxPool's indices)."""
        for extra in self.node.output[n_used:]:
            if extra and self.conv.consumers_of.get(extra):
                raise self.error(f"output {extra!r} is used, which is not supported")

    def set_const(self, array: np.ndarray, output: str | None = None) -> None:
        """Fold the node: its output is the constant `array`."""
        if array.size > MAX_ELEMENTS:
            raise self.error(f"a constant of {array.size} elements is over the importer's limit")
        self.conv.spec.budget.charge(array.nbytes, self.label)
        self.conv.constants[output or self.output] = array

    def alias(self, source: str, output: str | None = None) -> None:
        """The node's output is `source` unchanged (Identity, Dropout in inference)."""
        out = output or self.output
        if source in self.conv.values:
            self.conv.values[out] = self.conv.values[source]
            self.conv.aliases[out] = source
        else:
            self.conv.constants[out] = self.conv.constants[source]

    def check_size(self, shape: tuple[int, ...], what: str = "output", limit: int = MAX_ACTIVATION) -> None:
        """Refuse an example activation (or, with limit=MAX_ELEMENTS, a constant) over the size limit before
        anything of that size is allocated."""
        if math.prod(shape) > limit:
            raise self.error(f"{what} shape {list(shape)} is over the importer's limit of {limit} entries")

    def check_const_size(self, shape: tuple[int, ...]) -> None:
        """Refuse a folded constant over the size limit before it is allocated."""
        self.check_size(shape, "constant", MAX_ELEMENTS)

    def broadcast(self, *shapes: tuple[int, ...]) -> tuple[int, ...]:
        try:
            return _broadcast_shape(*shapes)
        except OnnxImportError as err:
            raise self.error(str(err)) from None

    def emit(self, module: nn.Module, inputs: list[str], hint: str, output: str | None = None) -> str:
        """Add `module` reading the tensor values `inputs` and writing `output` (default: the node's output).

        Runs it on the example activations and refuses it if it does not treat the examples of a batch
        independently (the batched result must be the stack of the one-example results).
        """
        out = output or self.output
        module.eval()
        args = [self.conv.values[i] for i in inputs]
        try:
            with torch.no_grad():
                batched = module(*args)
                singles = [module(*[a[k : k + 1] for a in args]) for k in range(_EXAMPLES)]
        except RuntimeError as err:  # torch's shape errors: the converter's checks missed a case; name the node
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise self.error(f"the op cannot be applied to the model's values ({first})") from None
        if not isinstance(batched, Tensor) or batched.dim() == 0 or batched.shape[0] != _EXAMPLES:
            raise self.error("the result does not keep the batch dimension first (the op mixes examples)")
        stacked = torch.cat(singles)
        # Mixing examples changes values at their own scale; float32 rounding of batched vs single kernels does
        # not come near 1e-4 of it.
        scale = float(batched.abs().nan_to_num(posinf=0.0, neginf=0.0).max()) if batched.numel() else 0.0
        close = stacked.shape == batched.shape and torch.allclose(
            stacked, batched, rtol=1e-4, atol=1e-4 * (1.0 + scale), equal_nan=True
        )
        if not close:
            raise self.error("the op mixes the examples of a batch (it is not applied to each example alone)")
        name = self.conv.unique_name(hint)
        shapes = [tuple(a.shape[1:]) for a in args]
        self.conv.steps.append(Step(name, module, [self.conv.resolve(i) for i in inputs], out, shapes))
        self.conv.values[out] = batched
        if self.conv.live_entries() > MAX_LIVE:
            raise self.error(f"the graph's activations alive at once exceed the importer's limit of {MAX_LIVE} entries")
        return out

    def record(self, module: nn.Module, param: str, name: str, transpose: bool = False, scale: float = 1.0) -> None:
        """Note that `module`'s `param` is initializer `name` (transposed, scaled); nothing when `name` is not an
        initializer of the file (a Constant node's value, a folded constant)."""
        array = self.conv.spec.constants.get(name)
        if array is not None:
            self.conv.sources.setdefault(id(module), {})[param] = ParamSource(
                name, tuple(array.shape), transpose, scale
            )

    # --- fusion ---------------------------------------------------------------------------------------------
    def sole_consumer(self, value: str | None = None) -> onnx.NodeProto | None:
        """The one node reading `value` (default: this node's output), when it is read once and is not the output."""
        name = value or self.output
        users = self.conv.consumers_of.get(name, [])
        if len(users) != 1 or name == self.conv.spec.output_name:
            return None
        return users[0]

    def absorb(self, node: onnx.NodeProto) -> None:
        """Mark `node` as converted (fused into the module this converter emits)."""
        self.conv.absorbed.add(id(node))

    def other_input(self, node: onnx.NodeProto, value: str) -> str:
        """The input of the binary `node` that is not `value` ('' when both are)."""
        others = [i for i in node.input if i != value]
        return others[0] if len(others) == 1 and len(node.input) == 2 else ""
