"""ONNX file -> nn.Module: read safely, validate the graph, convert node by node through the converter table."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from . import converters  # noqa: F401  (fills the converter table)
from .context import Conversion, NodeContext, ParamSource
from .errors import OnnxImportError
from .graph import node_label, read_graph
from .graph_module import build_module, prepend
from .layers import Reshape
from .loader import read_model
from .registry import find_converter
from .rewrite import fold_permutations

__all__ = ["ImportedModel", "import_onnx", "load_onnx", "reshape_input"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportedModel:
    """An imported model and what the file says about it.

    Attributes:
        model: the module (eval mode): x (N, *input_shape) -> logits (N, K).
        input_shape: the shape of one example: the ONNX input shape without its leading batch dimension.
        opset: the model's default-domain opset.
        input_name, output_name: the ONNX graph's input and output names.
        sources: for each parameter ("layers_0.weight") that holds one initializer of the file, where it came
            from (what `export_onnx` inverts to write changed weights back).
    """

    model: nn.Module
    input_shape: tuple[int, ...]
    opset: int
    input_name: str
    output_name: str
    sources: dict[str, ParamSource] = field(default_factory=dict)


def reshape_input(imported: ImportedModel, input_shape: tuple[int, ...]) -> ImportedModel:
    """The model fed examples of `input_shape` (same number of entries), reshaped in row-major order to the
    file's input shape by a first module named 'input_reshape' (e.g. (1, 28, 28) images into a (784, 1) MLP).

    Only the caller knows whether row-major order is the model's order (it is for a flattened single-channel
    image; a channels-last model fed channels-first data has the same entry count and other values).
    """
    shape = tuple(int(s) for s in input_shape)
    if math.prod(shape) != math.prod(imported.input_shape) or min(shape, default=1) < 1:
        raise OnnxImportError(
            f"inputs of shape {shape} cannot be reshaped to the model's input shape {imported.input_shape}"
        )
    if shape == imported.input_shape:
        return imported
    model = prepend(imported.model, "input_reshape", Reshape(imported.input_shape))
    return replace(imported, model=model, input_shape=shape)


def load_onnx(path: str | Path) -> nn.Module:
    """Import the ONNX model at `path` as a plain PyTorch module in eval mode (see `import_onnx`)."""
    return import_onnx(path).model


def import_onnx(path: str | Path) -> ImportedModel:
    """Import the ONNX model at `path` as a plain PyTorch module in eval mode, with its input shape.

    The ONNX graph describes one example: its input has a leading batch dimension of 1 (or a symbolic one),
    e.g. (1, 784), (1, 784, 1), (1, 1, 28, 28). The module takes a batch x: (N, *input_shape), input_shape the
    ONNX input shape without that leading dimension, and returns logits (N, K): the graph's output on each
    example, flattened after the batch dimension if the graph returns more than two dimensions.

    Only `path` is read, plus external tensor data in regular files inside its folder.

    Raises:
        OnnxImportError: the file cannot be read or parsed, is hostile (sizes over the limits, external data
            outside the folder, a cycle, undefined or doubly defined names), or uses an op, attribute or opset
            the importer does not support; the one-line message names the node (op type, name, opset).
    """
    p = Path(path)
    model = read_model(p)
    spec = read_graph(model, p.parent, str(p))
    conv = Conversion.start(spec)
    for node in spec.nodes:
        if id(node) in conv.absorbed:
            continue
        label = f"{p}: {node_label(node, spec.opset)}"
        if node.domain not in ("", "ai.onnx"):
            raise OnnxImportError(f"{label}: op domain {node.domain!r} is not supported")
        if not node.output or not node.output[0]:
            raise OnnxImportError(f"{label}: the node's first output has no name")
        used = [o for o in node.output[1:] if o and o in conv.consumers_of]
        if used or spec.output_name in node.output[1:]:
            raise OnnxImportError(f"{label}: its extra output {(used or [spec.output_name])[0]!r} is used")
        convert = find_converter(node.op_type, spec.opset, label)
        try:
            convert(NodeContext(conv, node))
        except OnnxImportError:
            raise
        except (TypeError, ValueError, IndexError, KeyError, OverflowError) as err:
            # A malformed attribute or constant (a string where a number belongs, a rank numpy refuses) that
            # no converter check anticipated: still the file's fault, so one line naming the node.
            detail = " ".join(str(err).split())
            raise OnnxImportError(f"{label}: malformed node ({type(err).__name__}: {detail})") from None
        conv.release(node)
    if spec.output_name not in conv.values:
        raise OnnxImportError(f"{p}: the graph output {spec.output_name!r} does not depend on the input")
    output = conv.resolve(spec.output_name)
    if conv.values[spec.output_name].dim() != 2:
        ctx = NodeContext(conv, spec.nodes[-1])
        output = ctx.emit(nn.Flatten(), [spec.output_name], "flatten_output", output=f"{output}::flat")
    logger.debug("imported %s: %d modules", p, len(conv.steps))
    module = build_module(fold_permutations(conv.steps, output, conv.sources), spec.input_name, output)
    sources = {
        f"{name}.{param}": source
        for name, m in module.named_modules()
        for param, source in conv.sources.get(id(m), {}).items()
    }
    return ImportedModel(module, spec.input_shape, spec.opset, spec.input_name, spec.output_name, sources)
