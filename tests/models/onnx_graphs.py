"""Small ONNX graphs built with onnx.helper, and onnxruntime as the reference that runs them (shared by the ONNX
import tests)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper


@dataclass
class Graph:
    """A graph under construction: nodes, initializers, the input's shape for one example (batch 1 first)."""

    input_shape: tuple[int, ...]
    opset: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    count: int = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array: np.ndarray, name: str | None = None) -> str:
        name = name or self.name("c")
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, *shape: int, name: str | None = None, scale: float = 0.3) -> str:
        return self.const(self.rng.normal(size=shape).astype(np.float32) * np.float32(scale), name)

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: object) -> str:
        outs = [self.name("v") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(op_type.lower()), **attrs))
        return outs[0]

    def axes_op(self, op_type: str, x: str, axes: Sequence[int]) -> str:
        """Squeeze / Unsqueeze with axes as an attribute (opset < 13) or an input (opset >= 13)."""
        if self.opset >= 13:
            return self.op(op_type, [x, self.const(np.asarray(axes, dtype=np.int64))])
        return self.op(op_type, [x], axes=list(axes))

    def model(self, output: str, batch: int | str = 1) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *self.input_shape[1:]])
        y = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, "g", [x], [y], self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


Case = Callable[[Graph], str]

#: What onnxruntime raises for a graph it will not run.
ORT_ERRORS = (
    ort.capi.onnxruntime_pybind11_state.Fail,
    ort.capi.onnxruntime_pybind11_state.RuntimeException,
    ort.capi.onnxruntime_pybind11_state.InvalidArgument,
    ort.capi.onnxruntime_pybind11_state.InvalidGraph,
    ort.capi.onnxruntime_pybind11_state.NotImplemented,
)


def save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def run_ort(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's output for each example of x (N, ...), run one example at a time, stacked (N, K)."""
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    rows = [np.asarray(sess.run(None, {name: x[k : k + 1]})[0]).reshape(1, -1) for k in range(len(x))]
    return np.concatenate(rows)
