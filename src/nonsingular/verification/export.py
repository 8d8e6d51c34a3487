"""`--export-worst`: the ONNX file of a joint counterexample, i.e. the user's ONNX graph with the perturbed weights W'.

The importer keeps ONNX weights as they are (a Gemm's B transposed when transB = 0), so each perturbed module's
weight is found among the graph's initializers by value: the one initializer equal to W (or to W transposed for
a 2-D weight) is replaced by W' in the same layout. A weight that matches no initializer or several, a Gemm
scale alpha folded into it, or tensors stored outside the file make the export refuse with one line, never guess.
onnxruntime then runs the written file on the counterexample: the export is kept only if the output it computes
is in the unsafe region too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from torch import Tensor, nn

from ..errors import InputError
from ..models.onnx.loader import read_model, tensor_array
from ..runtime.files import atomic_write

__all__ = ["export_perturbed"]


def export_perturbed(source: str | Path, model: nn.Module, weights: dict[str, Tensor], out: str | Path) -> None:
    """Write `source` with each parameter of `weights` (model parameter name -> W') replaced, to `out`.

    Raises:
        InputError: a parameter cannot be matched to exactly one initializer, or the file keeps external data.
    """
    source = Path(source)
    proto = read_model(source)
    inits = list(proto.graph.initializer)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in inits):
        raise InputError(f"{source}: --export-worst needs the weights inside the ONNX file (it uses external data)")
    arrays = [tensor_array(t, source.parent, t.name) for t in inits]
    params = dict(model.named_parameters())
    for name, perturbed in weights.items():
        original = params[name].detach().float().numpy()
        new = perturbed.detach().float().numpy()
        hits = []
        for k, arr in enumerate(arrays):
            if arr.shape == original.shape and np.array_equal(arr, original):
                hits.append((k, new))
            elif original.ndim == 2 and arr.shape == original.T.shape and np.array_equal(arr, original.T):
                hits.append((k, np.ascontiguousarray(new.T)))
        if len(hits) != 1:
            raise InputError(
                f"--export-worst: parameter '{name}' matches {len(hits)} initializers of {source.name} (needs exactly "
                "one; a scaled or shared weight cannot be exported)"
            )
        k, value = hits[0]
        replacement = numpy_helper.from_array(value.astype(arrays[k].dtype), inits[k].name)
        proto.graph.initializer[k].CopyFrom(replacement)
        arrays[k] = value
    data = proto.SerializeToString()

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(data)

    atomic_write(out, write)
