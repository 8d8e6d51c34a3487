"""Imported ONNX graphs compute what onnxruntime computes: the table of small graphs (onnx_cases.py), one per op
and attribute variant, at opsets 7 to 21; torch-exported models; seeded random window ops and op chains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from onnx_cases import (
    CASES,
    FLAT,
    IMAGE,
    channels_last_flatten,
    gemm_two_layers,
    matmul_add,
    normalise_per_channel,
    random_chain,
    random_window_op,
    residual,
)
from onnx_graphs import ORT_ERRORS, Graph, run_ort, save
from torch import nn

from nonsingular.models import Normalize
from nonsingular.onnx_import import OnnxGraphModule, load_onnx
from nonsingular.onnx_import.layers import ConstantOp

OPSETS = (7, 8, 9, 13, 17, 21)


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


def test_random_window_ops_match_onnxruntime_or_are_refused(tmp_path: Path) -> None:
    """Seeded random pooling and convolution attributes: the import equals onnxruntime wherever onnxruntime
    runs the node and the importer accepts it; the importer refuses only with its one-line error."""
    from nonsingular.onnx_import import OnnxImportError

    rng = np.random.default_rng(7)
    compared = 0
    for trial in range(150):
        g, out, shape = random_window_op(rng)
        proto = g.model(out)
        x = rng.normal(size=(2, *shape[1:])).astype(np.float32)
        try:
            ref = run_ort(proto, x)
        except ORT_ERRORS:  # onnxruntime refuses some attribute combinations: nothing to compare
            continue
        try:
            model = load_onnx(save(proto, tmp_path, f"m{trial}.onnx"))
        except OnnxImportError as err:
            assert "\n" not in str(err)
            continue
        with torch.no_grad():
            got = model(torch.from_numpy(x)).numpy()
        assert got.shape == ref.shape, (trial, g.nodes[-1])
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5, err_msg=str(g.nodes[-1]))
        compared += 1
    assert compared >= 60


def test_a_channels_last_flatten_folds_into_the_dense_layer(tmp_path: Path) -> None:
    g = Graph(IMAGE, 13)
    model = load_onnx(save(g.model(channels_last_flatten(g)), tmp_path))
    from nonsingular.onnx_import.layers import Permute

    assert not any(isinstance(m, Permute) for m in model.modules())
    assert [type(m) for m in model.children()] == [nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear, nn.ReLU]
    assert dict(model.named_children())["dense"].out_features == 5


def test_random_chains_of_shape_and_elementwise_ops_match_onnxruntime(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for trial in range(60):
        g, out, shape = random_chain(rng)
        proto = g.model(out)
        x = rng.normal(size=(3, *shape[1:])).astype(np.float32)
        model = load_onnx(save(proto, tmp_path, f"m{trial}.onnx"))
        with torch.no_grad():
            got = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, run_ort(proto, x), rtol=1e-5, atol=1e-5, err_msg=str(g.nodes))
