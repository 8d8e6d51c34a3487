"""Broken and hostile ONNX files: each is refused with one OnnxImportError line naming the problem, before any
allocation of the sizes it declares, and nothing outside the model's folder is read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_graphs import Graph, save

from nonsingular.onnx_import import OnnxImportError, load_onnx
from nonsingular.onnx_import import loader as loader_module


def _mlp(opset: int = 13) -> onnx.ModelProto:
    g = Graph((1, 6), opset)
    h = g.op("Relu", [g.op("Gemm", ["x", g.weight(5, 6, name="fc1.weight"), g.weight(5)], transB=1)])
    return g.model(g.op("Gemm", [h, g.weight(3, 5, name="fc2.weight"), g.weight(3)], transB=1))


def _refused(path: Path, needle: str) -> str:
    with pytest.raises(OnnxImportError) as info:
        load_onnx(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert needle in message, message
    return message


def _graph(nodes, inits=(), inputs=None, outputs=("y",), opset: int = 13, elem=TensorProto.FLOAT, shape=(1, 6)):
    inputs = inputs if inputs is not None else [helper.make_tensor_value_info("x", elem, list(shape))]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    graph = helper.make_graph(list(nodes), "g", inputs, outs, list(inits))
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=7)


def _w(name: str, *shape: int, dtype=np.float32) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.ones(shape, dtype=dtype), name)


# --- unreadable files -----------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    _refused(tmp_path / "absent.onnx", "cannot read")


def test_a_folder(tmp_path: Path) -> None:
    (tmp_path / "dir.onnx").mkdir()
    _refused(tmp_path / "dir.onnx", "not a regular file")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"")
    _refused(tmp_path / "m.onnx", "empty")


@pytest.mark.parametrize("data", [b"\xff\xff\xff\xff", b"not an onnx file at all\n" * 10, bytes(range(256))])
def test_malformed_protobuf(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "m.onnx").write_bytes(data)
    _refused(tmp_path / "m.onnx", "not an ONNX model")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path: Path, fraction: float) -> None:
    data = _mlp().SerializeToString()
    (tmp_path / "m.onnx").write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(OnnxImportError) as info:
        load_onnx(tmp_path / "m.onnx")
    assert "\n" not in str(info.value)


# --- sizes ----------------------------------------------------------------------------------------------------


def test_huge_declared_dims_are_refused_before_allocating(tmp_path: Path, monkeypatch) -> None:
    huge = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**20, 2**20], raw_data=b"\0" * 16)
    model = _graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [huge])
    monkeypatch.setattr(np, "frombuffer", None)  # any decoding attempt would fail loudly
    _refused(save(model, tmp_path), "over the importer's limit")


def test_dims_that_disagree_with_the_data(tmp_path: Path) -> None:
    short = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[6, 3], raw_data=b"\0" * 8)
    _refused(save(_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [short]), tmp_path), "bytes of data")


def test_negative_dims(tmp_path: Path) -> None:
    bad = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-6, 3], raw_data=b"")
    _refused(save(_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [bad]), tmp_path), "negative dimension")


def test_huge_input_shape(tmp_path: Path) -> None:
    model = _graph([helper.make_node("Relu", ["x"], ["y"])], shape=(1, 2**16, 2**16))
    _refused(save(model, tmp_path), "over the importer's limit")


def test_huge_padding(tmp_path: Path) -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[2**19, 2**19, 2**19, 2**19])
    model = _graph([node], [_w("w", 1, 1, 1, 1)], shape=(1, 1, 2, 2))
    _refused(save(model, tmp_path), "over the importer's limit")


# --- external data --------------------------------------------------------------------------------------------


def _external(tmp_path: Path, location: str) -> Path:
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[6, 3])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(6 * 3 * 4))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    (tmp_path / "model").mkdir(exist_ok=True)
    return save(_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [w]), tmp_path / "model")


def test_external_data_inside_the_folder_is_read(tmp_path: Path) -> None:
    path = _external(tmp_path, "weights.bin")
    w = np.arange(18, dtype=np.float32).reshape(6, 3) / 10
    (tmp_path / "model" / "weights.bin").write_bytes(w.tobytes())
    model = load_onnx(path)
    np.testing.assert_array_equal(model[0].weight.detach().numpy(), w.T)


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    path = _external(tmp_path, location)
    (tmp_path / "secret.bin").write_bytes(b"\0" * 72)
    (tmp_path / "model" / "sub").mkdir()
    _refused(path, "outside the model's folder")


def test_external_data_at_an_absolute_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 72)
    _refused(_external(tmp_path, str(tmp_path / "secret.bin")), "not a relative path")


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    path = _external(tmp_path, "link.bin")
    (tmp_path / "secret.bin").write_bytes(b"\0" * 72)
    os.symlink(tmp_path / "secret.bin", tmp_path / "model" / "link.bin")
    _refused(path, "outside the model's folder")


def test_external_data_that_is_not_a_file(tmp_path: Path) -> None:
    path = _external(tmp_path, "weights.bin")
    (tmp_path / "model" / "weights.bin").mkdir()
    _refused(path, "not a regular file")


def test_external_data_too_short(tmp_path: Path) -> None:
    path = _external(tmp_path, "weights.bin")
    (tmp_path / "model" / "weights.bin").write_bytes(b"\0" * 10)
    _refused(path, "too few")


def test_external_data_missing(tmp_path: Path) -> None:
    _refused(_external(tmp_path, "absent.bin"), "not found")


def test_no_file_outside_is_opened(tmp_path: Path, monkeypatch) -> None:
    """The refusal comes before any open of the named file (checked by recording every os.open)."""
    path = _external(tmp_path, "../secret.bin")
    (tmp_path / "secret.bin").write_bytes(b"\0" * 72)
    opened: list[str] = []
    real_open = os.open

    def spy(p, *args, **kwargs):
        opened.append(str(p))
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(loader_module.os, "open", spy)
    _refused(path, "outside")
    assert not any("secret" in p for p in opened)


# --- structure ------------------------------------------------------------------------------------------------


def test_cycle(tmp_path: Path) -> None:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])]
    nodes.append(helper.make_node("Relu", ["b"], ["y"]))
    _refused(save(_graph(nodes), tmp_path), "cycle")


def test_self_loop_in_a_dead_branch(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["z"], ["z"])]
    _refused(save(_graph(nodes), tmp_path), "cycle")


def test_dangling_input_name(tmp_path: Path) -> None:
    _refused(save(_graph([helper.make_node("Add", ["x", "ghost"], ["y"])]), tmp_path), "'ghost'")


def test_duplicate_output_names(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["y"])]
    _refused(save(_graph(nodes), tmp_path), "defined twice")


def test_output_that_shadows_the_input(tmp_path: Path) -> None:
    _refused(save(_graph([helper.make_node("Relu", ["x"], ["x"])], outputs=("x",)), tmp_path), "defined twice")


def test_two_outputs(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["z"])]
    _refused(save(_graph(nodes, outputs=("y", "z")), tmp_path), "2 outputs")


def test_output_independent_of_the_input(tmp_path: Path) -> None:
    model = _graph(
        [helper.make_node("Relu", ["c"], ["y"]), helper.make_node("Relu", ["x"], ["unused"])], [_w("c", 1, 3)]
    )
    _refused(save(model, tmp_path), "depend on the model input")


def test_two_inputs(tmp_path: Path) -> None:
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 6]) for n in ("x", "x2")]
    _refused(save(_graph([helper.make_node("Add", ["x", "x2"], ["y"])], inputs=inputs), tmp_path), "2 inputs")


# --- unsupported content --------------------------------------------------------------------------------------


def test_unsupported_op_names_op_node_and_opset(tmp_path: Path) -> None:
    node = helper.make_node("Softsign", ["x"], ["y"], name="act7")
    message = _refused(save(_graph([node], opset=17), tmp_path), "op Softsign is not supported")
    assert "'act7'" in message and "opset 17" in message


def test_unsupported_attribute(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["x"], ["y"], name="r", flavour=3)
    _refused(save(_graph([node]), tmp_path), "attribute 'flavour'")


def test_foreign_domain(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["x"], ["y"], domain="com.example")
    _refused(save(_graph([node]), tmp_path), "domain 'com.example'")


@pytest.mark.parametrize("opset", [6, 22])
def test_opset_outside_the_supported_range(tmp_path: Path, opset: int) -> None:
    _refused(save(_graph([helper.make_node("Relu", ["x"], ["y"])], opset=opset), tmp_path), f"opset {opset}")


def test_dynamic_dimension_other_than_the_batch(tmp_path: Path) -> None:
    _refused(save(_graph([helper.make_node("Relu", ["x"], ["y"])], shape=(1, "width")), tmp_path), "dynamic")


def test_leading_dimension_that_is_not_a_batch(tmp_path: Path) -> None:
    _refused(save(_graph([helper.make_node("Relu", ["x"], ["y"])], shape=(784,)), tmp_path), "batch dimension")


def test_shape_computed_from_the_values(tmp_path: Path) -> None:
    """A Reshape whose target depends on the input's values cannot be fixed at import."""
    _refused(save(_graph([helper.make_node("Reshape", ["x", "x"], ["y"])]), tmp_path), "must be a constant")


def test_a_cast_of_the_values_to_integers(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Cast", ["x"], ["s"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "s"], ["y"]),
    ]
    _refused(save(_graph(nodes), tmp_path), "casting the model's values to integers")


def test_a_fifo_as_external_data_does_not_hang(tmp_path: Path) -> None:
    path = _external(tmp_path, "weights.bin")
    os.mkfifo(tmp_path / "model" / "weights.bin")
    _refused(path, "not a regular file")


@pytest.mark.parametrize("elem", [TensorProto.INT64, TensorProto.DOUBLE, TensorProto.FLOAT16])
def test_input_that_is_not_float32(tmp_path: Path, elem: int) -> None:
    _refused(save(_graph([helper.make_node("Relu", ["x"], ["y"])], elem=elem), tmp_path), "not a float32 tensor")


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int8])
def test_weights_that_are_not_float32(tmp_path: Path, dtype: type) -> None:
    model = _graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [_w("w", 6, 3, dtype=dtype)])
    _refused(save(model, tmp_path), "w")


def test_a_reshape_that_mixes_the_batch(tmp_path: Path) -> None:
    shape = onnx.numpy_helper.from_array(np.asarray([3, 2], np.int64), "s")
    _refused(save(_graph([helper.make_node("Reshape", ["x", "s"], ["y"])], [shape]), tmp_path), "batch dimension")


@pytest.mark.parametrize(
    ("node", "needle"),
    [
        (helper.make_node("Gemm", ["x", "w"], ["y"], alpha="big", transB=1), "malformed node"),
        (helper.make_node("Gemm", ["x", "w"], ["y"], alpha=[1.0, 2.0], transB=1), "malformed node"),
        (helper.make_node("Flatten", ["x"], ["y"], axis=1.5), "must be integers"),
        (helper.make_node("Flatten", ["x"], ["y"], axis=7), "out of range"),
        (helper.make_node("Transpose", ["x"], ["y"], perm=[0, 0]), "not a permutation"),
        (helper.make_node("Unsqueeze", ["x"], ["y"], axes=[0]), "attribute 'axes'"),  # an input from opset 13
    ],
)
def test_malformed_attributes(tmp_path: Path, node: onnx.NodeProto, needle: str) -> None:
    model = _graph([node], [_w("w", 3, 6)])
    _refused(save(model, tmp_path), needle)


def test_a_used_extra_output(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r", "extra"]), helper.make_node("Add", ["r", "extra"], ["y"])]
    _refused(save(_graph(nodes), tmp_path), "extra output 'extra' is used")


def test_an_input_of_too_many_dimensions(tmp_path: Path) -> None:
    _refused(save(_graph([helper.make_node("Relu", ["x"], ["y"])], shape=(1,) * 70), tmp_path), "dimensions")


def test_external_data_named_again_and_again_is_capped(tmp_path: Path, monkeypatch) -> None:
    """One small external file named by many tensors cannot make the importer read without bound."""
    g = Graph((1, 6), 13)
    h = "x"
    for k in range(20):
        w = TensorProto(name=f"w{k}", data_type=TensorProto.FLOAT, dims=[6, 6], data_location=TensorProto.EXTERNAL)
        for key, value in (("location", "weights.bin"), ("length", str(6 * 6 * 4))):
            entry = w.external_data.add()
            entry.key, entry.value = key, value
        g.inits.append(w)
        h = g.op("MatMul", [h, f"w{k}"])
    (tmp_path / "weights.bin").write_bytes(np.eye(6, dtype=np.float32).tobytes())
    path = save(g.model(h), tmp_path)
    assert load_onnx(path) is not None
    monkeypatch.setattr(loader_module, "MAX_TOTAL_BYTES", 10 * 6 * 6 * 4)
    _refused(path, "constants exceed the importer's limit")


def test_activations_alive_at_once_are_capped(tmp_path: Path, monkeypatch) -> None:
    from nonsingular.onnx_import import context

    g = Graph((1, 64), 13)
    branches = [g.op("Relu", ["x"]) for _ in range(6)]
    path = save(g.model(g.op("Concat", branches, axis=1)), tmp_path)
    assert load_onnx(path) is not None
    monkeypatch.setattr(context, "MAX_LIVE", 3 * 64 * 4)
    _refused(path, "activations alive at once")


def test_names_with_newlines_and_huge_names_stay_one_short_line(tmp_path: Path) -> None:
    node = helper.make_node("Soft\nsign", ["x"], ["y"], name="evil\nname" + "x" * 100_000)
    message = _refused(save(_graph([node]), tmp_path), "is not supported")
    assert len(message) <= 1000


def test_a_huge_name_makes_a_short_module_name(tmp_path: Path) -> None:
    w = _w("w" * 10_000 + ".weight", 3, 6)
    model = load_onnx(save(_graph([helper.make_node("Gemm", ["x", w.name], ["y"], transB=1)], [w]), tmp_path))
    assert all(len(name) <= 64 for name, _ in model.named_modules())
