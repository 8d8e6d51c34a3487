"""ONNX file -> nn.Module: read safely, validate the graph, convert node by node through the converter table."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from . import converters  # noqa: F401  (fills the converter table)
from .context import Conversion, NodeContext
from .errors import OnnxImportError
from .graph import node_label, read_graph
from .graph_module import build_module
from .loader import read_model
from .registry import find_converter

__all__ = ["load_onnx"]

logger = logging.getLogger(__name__)


def load_onnx(path: str | Path) -> nn.Module:
    """Import the ONNX model at `path` as a plain PyTorch module in eval mode.

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
        label = node_label(node, spec.opset)
        if node.domain not in ("", "ai.onnx"):
            raise OnnxImportError(f"{p}: {label}: op domain {node.domain!r} is not supported")
        find_converter(node.op_type, spec.opset, f"{p}: {label}")(NodeContext(conv, node))
    output = conv.resolve(spec.output_name)
    if output not in conv.values:
        raise OnnxImportError(f"{p}: the graph output {spec.output_name!r} does not depend on the input")
    if conv.values[output].dim() != 2:
        flat = f"{output}::flat"
        ctx = NodeContext(conv, spec.nodes[-1])
        output = ctx.emit(nn.Flatten(), [output], "flatten_output", output=flat)
    logger.debug("imported %s: %d modules", p, len(conv.steps))
    return build_module(conv.steps, spec.input_name, output)
