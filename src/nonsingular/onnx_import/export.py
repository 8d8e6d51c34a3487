"""Write an imported model's changed weights back into a copy of its ONNX file.

A counterexample of a joint (input + weight) threat is an input *and* a network; `export_onnx` writes that
network as an ONNX file (the original graph, initializers replaced) so that onnxruntime, or any other tool, can
check it independently of nonsingular.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from torch import Tensor

from ..files import atomic_write
from .convert import ImportedModel
from .errors import OnnxImportError
from .graph import read_graph
from .loader import read_model

__all__ = ["export_onnx"]


def _initializer_value(imported: ImportedModel, name: str, value: Tensor) -> tuple[str, np.ndarray]:
    """(initializer name, its new contents) for module parameter `name` holding `value`."""
    source = imported.sources.get(name)
    if source is None:
        raise OnnxImportError(
            f"parameter {name!r} does not hold one initializer of the file (folded, broadcast or not a weight)"
        )
    array = value.detach().to("cpu").double()
    if source.columns is not None:
        array = array[:, source.columns]
    array = array / source.scale if source.scale != 1.0 else array
    array = array.T if source.transpose else array
    if array.numel() != int(np.prod(source.dims)):
        raise OnnxImportError(
            f"parameter {name!r} has {array.numel()} entries, initializer {source.initializer!r} {list(source.dims)}"
        )
    return source.initializer, array.reshape(source.dims).numpy().astype(np.float32)


def export_onnx(source: str | Path, imported: ImportedModel, params: Mapping[str, Tensor], out: str | Path) -> None:
    """Write a copy of the ONNX file `source` (from which `imported` was made) with the initializers behind
    `params` replaced, atomically, to `out`.

    Args:
        source: the ONNX file `imported` came from.
        imported: its import (`import_onnx(source)`).
        params: new values by module parameter name, e.g. {"layers_0.weight": w, "layers_0.bias": b}, in the
            module's layout (the export undoes transposes, Gemm's alpha / beta and folded permutations).
        out: the new file; external data of the source is written inline, so `out` stands alone.

    Raises:
        OnnxImportError: a parameter that holds no single initializer, or two parameters that hold the same
            initializer (tied weights) with different values.
    """
    src = Path(source)
    model = read_model(src)
    spec = read_graph(model, src.parent, str(src))  # decodes (and checks) every initializer the graph uses
    updates: dict[str, np.ndarray] = {}
    for name, value in params.items():
        initializer, array = _initializer_value(imported, name, value)
        if initializer in updates and not np.array_equal(updates[initializer], array):
            raise OnnxImportError(f"initializer {initializer!r} is shared by layers given different values")
        updates[initializer] = array
    kept = []
    for tensor in model.graph.initializer:
        if tensor.name in updates or tensor.data_location == onnx.TensorProto.EXTERNAL:
            new: np.ndarray | None = updates.get(tensor.name, spec.constants.get(tensor.name))
            if new is None:
                continue  # external data the graph does not read: dropped rather than left dangling
            tensor = onnx.numpy_helper.from_array(np.ascontiguousarray(new), tensor.name)
        kept.append(tensor)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    data = model.SerializeToString()
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
