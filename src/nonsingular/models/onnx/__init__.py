"""ONNX models in, as ordinary nn.Modules (Linear, Conv2d, ReLU, ...), so every threat, attack and bound applies.

    from nonsingular.models.onnx import load_onnx
    model = load_onnx("mnist-net_256x2.onnx")   # eval mode; x: (N, *input_shape) -> logits (N, K)

A small importer over the `onnx` package: one converter per op in one table (registry.py), an untrusting reader
(loader.py) and the resulting module (graph_module.py). See docs/onnx.md for the ops, the input-shape convention
and the refusals. Part of `models`: imports only the vocabulary, `runtime` (atomic writes) and `models.mlp`
(`Normalize`), never the attacks or bounds that consume what it builds.
"""

from __future__ import annotations

from .convert import ImportedModel, import_onnx, load_onnx, reshape_input
from .errors import OnnxImportError
from .export import export_onnx
from .graph_module import OnnxGraphModule

__all__ = [
    "ImportedModel",
    "OnnxGraphModule",
    "OnnxImportError",
    "export_onnx",
    "import_onnx",
    "load_onnx",
    "reshape_input",
]
