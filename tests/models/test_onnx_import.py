"""Imported ONNX graphs compute what onnxruntime computes: a table of small graphs, one per op and attribute
variant, at opsets 9, 13 and 17 (and 21, the newest the importer accepts), plus torch-exported models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx_graphs import Case, Graph, run_ort, save
from torch import nn

from nonsingular.models import Normalize
from nonsingular.onnx_import import OnnxGraphModule, load_onnx
from nonsingular.onnx_import.layers import ConstantOp

OPSETS = (9, 13, 17, 21)


def _mlp_gemm(
    g: Graph, trans_b: int = 1, alpha: float = 1.0, beta: float = 1.0, c_shape: tuple[int, ...] = (5,)
) -> str:
    w = g.weight(5, 6) if trans_b else g.weight(6, 5)
    inputs = ["x", w] + ([g.weight(*c_shape)] if c_shape != () or g.opset >= 11 else [])
    if c_shape == () and g.opset < 11:
        inputs.append(g.weight(5))
    h = g.op("Gemm", inputs, transB=trans_b, alpha=alpha, beta=beta)
    return g.op("Relu", [h])


def gemm_trans_b(g: Graph) -> str:
    return _mlp_gemm(g)


def gemm_no_trans(g: Graph) -> str:
    return _mlp_gemm(g, trans_b=0)


def gemm_alpha_beta(g: Graph) -> str:
    return _mlp_gemm(g, alpha=0.5, beta=2.0, c_shape=(1, 5))


def gemm_scalar_c(g: Graph) -> str:
    return _mlp_gemm(g, c_shape=(1,))


def gemm_two_layers(g: Graph) -> str:
    h = g.op("Gemm", ["x", g.weight(7, 6, name="fc1.weight"), g.weight(7, name="fc1.bias")], transB=1)
    h = g.op("Tanh", [h])
    return g.op("Gemm", [h, g.weight(4, 7, name="fc2.weight"), g.weight(4, name="fc2.bias")], transB=1)


def matmul_add(g: Graph) -> str:
    h = g.op("MatMul", ["x", g.weight(6, 5)])
    h = g.op("Add", [h, g.weight(5)])
    return g.op("Sigmoid", [h])


def matmul_no_bias(g: Graph) -> str:
    return g.op("MatMul", ["x", g.weight(6, 3)])


def matmul_left_column(g: Graph) -> str:  # input (1, 6, 1): W @ x
    h = g.op("MatMul", [g.weight(4, 6), "x"])
    return g.op("Relu", [h])


def matmul_left_matrix(g: Graph) -> str:  # input (1, 6, 2): W @ x with two columns
    return g.op("MatMul", [g.weight(3, 6), "x"])


def conv_basic(g: Graph) -> str:
    h = g.op("Conv", ["x", g.weight(4, 3, 3, 3), g.weight(4)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return g.op("Relu", [h])


def conv_strides_dilations(g: Graph) -> str:
    return g.op("Conv", ["x", g.weight(4, 3, 3, 3)], strides=[2, 1], dilations=[1, 2], pads=[2, 1, 2, 1])


def conv_asymmetric(g: Graph) -> str:
    return g.op("Conv", ["x", g.weight(2, 3, 2, 3), g.weight(2)], pads=[0, 1, 1, 2], strides=[2, 2])


def conv_groups(g: Graph) -> str:
    return g.op("Conv", ["x", g.weight(6, 1, 3, 3), g.weight(6)], group=3, pads=[1, 1, 1, 1])


def conv_same_upper(g: Graph) -> str:
    return g.op("Conv", ["x", g.weight(2, 3, 2, 2)], auto_pad="SAME_UPPER", strides=[2, 2])


def conv_same_lower(g: Graph) -> str:
    return g.op("Conv", ["x", g.weight(2, 3, 4, 4)], auto_pad="SAME_LOWER")


def conv_valid(g: Graph) -> str:
    return g.op("Conv", ["x", g.weight(2, 3, 3, 3)], auto_pad="VALID")


def conv1d(g: Graph) -> str:  # input (1, 3, 8)
    return g.op("Conv", ["x", g.weight(2, 3, 3), g.weight(2)], pads=[1, 2], strides=[2])


def residual(g: Graph) -> str:
    h = g.op("Conv", ["x", g.weight(3, 3, 3, 3), g.weight(3)], pads=[1, 1, 1, 1])
    h = g.op("Relu", [h])
    return g.op("Add", ["x", h])


def normalise_per_channel(g: Graph) -> str:
    mean = g.const(np.asarray([0.4, 0.5, 0.6], dtype=np.float32).reshape(1, 3, 1, 1))
    std = g.const(np.asarray([0.2, 0.25, 0.3], dtype=np.float32).reshape(3, 1, 1))
    h = g.op("Div", [g.op("Sub", ["x", mean]), std])
    return g.op("Relu", [h])


def normalise_scalar(g: Graph) -> str:
    h = g.op("Div", [g.op("Sub", ["x", g.const(np.float32(0.1307))]), g.const(np.asarray([0.3081], np.float32))])
    return g.op("MatMul", [g.op("Flatten", [h]), g.weight(12, 3)])


def constant_affine(g: Graph) -> str:
    h = g.op("Mul", [g.const(np.float32(2.0)), "x"])
    h = g.op("Add", [h, g.weight(1, 3, 1, 1)])
    h = g.op("Sub", [g.const(np.float32(0.5)), h])
    return g.op("Div", [h, g.const(np.asarray([4.0], np.float32))])


def two_tensor_ops(g: Graph) -> str:
    a = g.op("Relu", ["x"])
    b = g.op("Sigmoid", ["x"])
    return g.op("Sub", [g.op("Mul", [a, b]), g.op("Div", [a, g.op("Add", [b, b])])])


def batch_norm(g: Graph) -> str:
    var = g.const(np.asarray([0.5, 1.0, 2.0], np.float32))
    attrs = {"epsilon": 1e-3} if g.opset < 14 else {"epsilon": 1e-3, "training_mode": 0}
    return g.op("BatchNormalization", ["x", g.weight(3), g.weight(3), g.weight(3), var], **attrs)


def batch_norm_1d(g: Graph) -> str:  # input (1, 6)
    var = g.const(np.linspace(0.5, 2.0, 6).astype(np.float32))
    return g.op("BatchNormalization", ["x", g.weight(6), g.weight(6), g.weight(6), var])


def flatten_axis0(g: Graph) -> str:
    return g.op("MatMul", [g.op("Flatten", ["x"], axis=0), g.weight(12, 2)])


def reshape_constant(g: Graph) -> str:
    h = g.op("Reshape", ["x", g.const(np.asarray([1, -1], np.int64))])
    h = g.op("Gemm", [h, g.weight(5, 12), g.weight(5)], transB=1)
    return g.op("Reshape", [h, g.const(np.asarray([0, 5, 1], np.int64))])


def squeeze_unsqueeze(g: Graph) -> str:  # input (1, 6, 1)
    h = g.axes_op("Squeeze", "x", [2])
    h = g.op("Gemm", [h, g.weight(4, 6), g.weight(4)], transB=1)
    h = g.axes_op("Unsqueeze", h, [1, 3] if g.opset < 11 else [1, -1])
    h = g.op("Relu", [h])
    return g.axes_op("Squeeze", h, [1])


def transpose_reshape_only(g: Graph) -> str:  # input (1, 6, 1)
    h = g.op("Transpose", ["x"], perm=[0, 2, 1])
    return g.op("MatMul", [h, g.weight(6, 3)])


def transpose_permute(g: Graph) -> str:
    h = g.op("Transpose", ["x"], perm=[0, 2, 3, 1])
    return g.op("MatMul", [h, g.weight(3, 2)])


def average_pool(g: Graph) -> str:
    return g.op("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2])


def average_pool_pads(g: Graph) -> str:
    return g.op("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)


def average_pool_include_pad(g: Graph) -> str:
    return g.op("AveragePool", ["x"], kernel_shape=[3, 2], pads=[1, 0, 1, 1], count_include_pad=1, strides=[1, 2])


def average_pool_ceil(g: Graph) -> str:
    attrs = {"ceil_mode": 1} if g.opset >= 10 else {}
    return g.op("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], **attrs)


def max_pool(g: Graph) -> str:
    return g.op("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])


def max_pool_pads(g: Graph) -> str:
    return g.op("MaxPool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])


def max_pool_asymmetric(g: Graph) -> str:
    h = g.op("Sub", [g.const(np.float32(5.0)), "x"])  # all negative... then the pad must never win
    h = g.op("Mul", [h, g.const(np.float32(-1.0))])
    return g.op("MaxPool", [h], kernel_shape=[2, 2], pads=[1, 0, 0, 1])


def max_pool_dilated(g: Graph) -> str:
    attrs = {"dilations": [2, 1]} if g.opset >= 10 else {}
    return g.op("MaxPool", ["x"], kernel_shape=[2, 2], **attrs)


def global_average_pool(g: Graph) -> str:
    return g.op("GlobalAveragePool", [g.op("Relu", ["x"])])


def concat_branches(g: Graph) -> str:
    a = g.op("Conv", ["x", g.weight(2, 3, 1, 1)])
    b = g.op("Conv", ["x", g.weight(3, 3, 3, 3)], pads=[1, 1, 1, 1])
    return g.op("Concat", [a, b], axis=1)


def constant_identity_dropout(g: Graph) -> str:
    c = g.op("Constant", [], value=onnx.numpy_helper.from_array(np.full((1, 5), 0.25, np.float32)))
    h = g.op("Gemm", ["x", g.weight(5, 6), g.weight(5)], transB=1)
    h = g.op("Identity", [g.op("Add", [h, c])])
    return g.op("Dropout", [h], **({"ratio": 0.5} if g.opset < 12 else {}))


def shape_flatten_pattern(g: Graph) -> str:
    """What the TorchScript exporter writes for x.view(x.size(0), -1)."""
    shape = g.op("Shape", ["x"])
    n = g.op("Gather", [shape, g.const(np.asarray(0, np.int64))], axis=0)
    n = g.axes_op("Unsqueeze", n, [0])
    minus = g.op("Constant", [], value=onnx.numpy_helper.from_array(np.asarray([-1], np.int64)))
    target = g.op("Concat", [n, minus], axis=0)
    h = g.op("Reshape", ["x", target])
    return g.op("MatMul", [h, g.weight(12, 4)])


IMAGE, FLAT, COLUMN = (1, 3, 4, 4), (1, 6), (1, 6, 1)
CASES: dict[str, tuple[Case, tuple[int, ...]]] = {
    "gemm_trans_b": (gemm_trans_b, FLAT),
    "gemm_no_trans": (gemm_no_trans, FLAT),
    "gemm_alpha_beta": (gemm_alpha_beta, FLAT),
    "gemm_scalar_c": (gemm_scalar_c, FLAT),
    "gemm_two_layers": (gemm_two_layers, FLAT),
    "matmul_add": (matmul_add, FLAT),
    "matmul_no_bias": (matmul_no_bias, FLAT),
    "matmul_left_column": (matmul_left_column, COLUMN),
    "matmul_left_matrix": (matmul_left_matrix, (1, 6, 2)),
    "conv_basic": (conv_basic, IMAGE),
    "conv_strides_dilations": (conv_strides_dilations, (1, 3, 7, 6)),
    "conv_asymmetric": (conv_asymmetric, (1, 3, 5, 6)),
    "conv_groups": (conv_groups, IMAGE),
    "conv_same_upper": (conv_same_upper, (1, 3, 5, 5)),
    "conv_same_lower": (conv_same_lower, (1, 3, 5, 5)),
    "conv_valid": (conv_valid, IMAGE),
    "conv1d": (conv1d, (1, 3, 8)),
    "residual": (residual, IMAGE),
    "normalise_per_channel": (normalise_per_channel, IMAGE),
    "normalise_scalar": (normalise_scalar, (1, 3, 2, 2)),
    "constant_affine": (constant_affine, IMAGE),
    "two_tensor_ops": (two_tensor_ops, IMAGE),
    "batch_norm": (batch_norm, IMAGE),
    "batch_norm_1d": (batch_norm_1d, FLAT),
    "flatten_axis0": (flatten_axis0, (1, 3, 2, 2)),
    "reshape_constant": (reshape_constant, (1, 3, 2, 2)),
    "squeeze_unsqueeze": (squeeze_unsqueeze, COLUMN),
    "transpose_reshape_only": (transpose_reshape_only, COLUMN),
    "transpose_permute": (transpose_permute, IMAGE),
    "average_pool": (average_pool, IMAGE),
    "average_pool_pads": (average_pool_pads, (1, 2, 5, 5)),
    "average_pool_include_pad": (average_pool_include_pad, (1, 2, 5, 5)),
    "average_pool_ceil": (average_pool_ceil, (1, 2, 6, 6)),
    "max_pool": (max_pool, IMAGE),
    "max_pool_pads": (max_pool_pads, (1, 2, 5, 5)),
    "max_pool_asymmetric": (max_pool_asymmetric, (1, 2, 5, 5)),
    "max_pool_dilated": (max_pool_dilated, (1, 2, 5, 5)),
    "global_average_pool": (global_average_pool, IMAGE),
    "concat_branches": (concat_branches, IMAGE),
    "constant_identity_dropout": (constant_identity_dropout, FLAT),
    "shape_flatten_pattern": (shape_flatten_pattern, (1, 3, 2, 2)),
}


def _check_against_ort(model_proto, path: Path, shape: tuple[int, ...], n: int = 4) -> nn.Module:
    model = load_onnx(path)
    x = np.random.default_rng(1).normal(size=(n, *shape[1:])).astype(np.float32)
    ref = run_ort(model_proto, x)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-5)
    return model


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_imported_graph_matches_onnxruntime(case: str, opset: int, tmp_path: Path) -> None:
    build, shape = CASES[case]
    g = Graph(shape, opset)
    proto = g.model(build(g))
    model = _check_against_ort(proto, save(proto, tmp_path), shape)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_symbolic_batch_dimension(tmp_path: Path) -> None:
    g = Graph(FLAT, 13)
    proto = g.model(gemm_two_layers(g), batch="N")
    _check_against_ort(proto, save(proto, tmp_path), FLAT)


def test_matmul_then_add_is_one_linear_with_bias(tmp_path: Path) -> None:
    g = Graph(FLAT, 13)
    proto = g.model(matmul_add(g))
    model = load_onnx(save(proto, tmp_path))
    assert [type(m) for m in model.children()] == [nn.Linear, nn.Sigmoid]
    assert model[0].bias is not None


def test_sub_then_div_is_the_projects_normalize(tmp_path: Path) -> None:
    g = Graph(IMAGE, 13)
    proto = g.model(normalise_per_channel(g))
    model = load_onnx(save(proto, tmp_path))
    first = next(iter(model.children()))
    assert isinstance(first, Normalize)
    assert first.mean.tolist() == pytest.approx([0.4, 0.5, 0.6]) and first.std.tolist() == pytest.approx(
        [0.2, 0.25, 0.3]
    )
    assert not any(isinstance(m, ConstantOp) for m in model.modules())


def test_layers_are_named_after_the_initializers(tmp_path: Path) -> None:
    g = Graph(FLAT, 13)
    proto = g.model(gemm_two_layers(g))
    model = load_onnx(save(proto, tmp_path))
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears == ["fc1", "fc2"]


def test_a_graph_with_branches_is_a_graph_module(tmp_path: Path) -> None:
    g = Graph(IMAGE, 13)
    proto = g.model(residual(g))
    model = load_onnx(save(proto, tmp_path))
    assert isinstance(model, OnnxGraphModule)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, *IMAGE[1:])
    torch.testing.assert_close(traced(x), model(x))


def _export(module: nn.Module, shape: tuple[int, ...], path: Path, opset: int) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is deprecated
        torch.onnx.export(module.eval(), (torch.zeros(shape),), str(path), dynamo=False, opset_version=opset)


class _ResidualNet(nn.Module):
    """Residual block, then x.view(x.size(0), -1): the exporter writes Shape -> Gather -> Unsqueeze -> Concat."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = Normalize([0.5, 0.4, 0.3], [0.2, 0.3, 0.25])
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 2, stride=2)
        self.fc = nn.Linear(2 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        h = torch.relu(h + self.bn(self.conv1(h)))
        h = torch.relu(self.conv2(h))
        return self.fc(h.view(h.size(0), -1))


@pytest.mark.parametrize("opset", [9, 13, 17])
def test_torch_exported_residual_net_with_a_runtime_flatten(opset: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _ResidualNet().eval()
    path = tmp_path / "res.onnx"
    _export(net, (1, 3, 8, 8), path, opset)
    imported = load_onnx(path)
    assert isinstance(imported, OnnxGraphModule)
    assert {n for n, m in imported.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)} == {"conv1", "conv2", "fc"}
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(imported(x).numpy(), run_ort(path, x.numpy()), rtol=0, atol=1e-5)
        np.testing.assert_allclose(imported(x).numpy(), net(x).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("opset", [9, 13, 17])
def test_torch_exported_mlp_and_cnn(opset: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(Normalize(0.5, 0.25), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    cnn = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4, 5),
    )
    with torch.no_grad():
        cnn[1].running_mean.uniform_(-0.5, 0.5)
        cnn[1].running_var.uniform_(0.5, 2.0)
    for module, shape in ((mlp, (1, 1, 4, 4)), (cnn, (1, 3, 8, 8))):
        path = tmp_path / f"{len(module)}.onnx"
        _export(module, shape, path, opset)
        imported = load_onnx(path)
        x = torch.rand(5, *shape[1:])
        with torch.no_grad():
            np.testing.assert_allclose(imported(x).numpy(), run_ort(path, x.numpy()), rtol=0, atol=1e-5)
            np.testing.assert_allclose(imported(x).numpy(), module(x).numpy(), rtol=0, atol=1e-5)
