"""Imported ONNX models are ordinary modules for the threats, attacks and bounds: CROWN gives the same bounds as
on the native network, bounds trace graphs with branches, weight threats name the imported layers, and attacks
run on activations the bounds refuse."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx_graphs import Graph, save
from torch import nn

from nonsingular import ThreatModel
from nonsingular.attacks import PGD
from nonsingular.bounds import margin_bounds
from nonsingular.models import Normalize
from nonsingular.onnx_import import OnnxGraphModule, load_onnx


def _export(module: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is deprecated
        torch.onnx.export(module.eval(), (torch.zeros(shape),), str(path), dynamo=False, opset_version=13)
    return path


def _native_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        Normalize(0.3, 0.4), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4)
    ).eval()


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_bounds_on_an_imported_mlp_equal_the_native_ones(method: str, tmp_path: Path) -> None:
    native = _native_mlp()
    imported = load_onnx(_export(native, (1, 1, 4, 4), tmp_path / "mlp.onnx"))
    assert isinstance(imported[0], Normalize)
    torch.manual_seed(1)
    x, y = torch.rand(6, 1, 4, 4), torch.randint(0, 4, (6,))
    threat = ThreatModel(eps_x=0.02, eps_w=0.005, eps_b=0.005)
    ours = margin_bounds(imported, x, y, threat, method).lower
    theirs = margin_bounds(native, x, y, threat, method).lower
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def _residual_cnn(tmp_path: Path) -> nn.Module:
    g = Graph((1, 2, 6, 6), 13)
    mean = g.const(np.asarray([0.5, 0.4], np.float32).reshape(1, 2, 1, 1))
    h = g.op("Div", [g.op("Sub", ["x", mean]), g.const(np.asarray([0.25, 0.3], np.float32).reshape(2, 1, 1))])
    c = g.op("Relu", [g.op("Conv", [h, g.weight(2, 2, 3, 3, name="conv1.weight"), g.weight(2)], pads=[1, 1, 1, 1])])
    h = g.op("Add", [h, c])
    h = g.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = g.op("Flatten", [h])
    h = g.op("Relu", [g.op("Gemm", [h, g.weight(8, 18, name="fc.weight"), g.weight(8)], transB=1)])
    out = g.op("Gemm", [h, g.weight(3, 8, name="head.weight"), g.weight(3)], transB=1)
    return load_onnx(save(g.model(out), tmp_path))


def test_crown_traces_an_imported_graph_with_a_residual_branch(tmp_path: Path) -> None:
    model = _residual_cnn(tmp_path)
    assert isinstance(model, OnnxGraphModule)
    torch.manual_seed(2)
    x, y = torch.rand(4, 2, 6, 6), torch.randint(0, 3, (4,))
    threat = ThreatModel(eps_x=0.01, eps_w=0.002, layers=("conv1", "head"))
    lower = margin_bounds(model, x, y, threat, "crown").lower
    # sound: below the margins at random points of the input box (weights unperturbed are in the ball)
    for _ in range(20):
        x_s = (x + (torch.rand_like(x) * 2 - 1) * threat.eps_x).clamp(0, 1)
        with torch.no_grad():
            z = model(x_s)
        margins = z.gather(1, y[:, None]) - z
        assert bool((lower <= margins + 1e-5).all())
    exact = margin_bounds(model, x, y, ThreatModel(eps_x=0.0), "crown").lower
    with torch.no_grad():
        z = model(x)
    torch.testing.assert_close(exact, z.gather(1, y[:, None]) - z, rtol=1e-4, atol=1e-4)


def test_weight_threats_name_the_imported_layers(tmp_path: Path) -> None:
    model = _residual_cnn(tmp_path)
    threat = ThreatModel(eps_w=0.01, layers=("conv1", "fc"), channel_eps=(("conv1", (0.01, 0.02)),))
    assert [name for name, _ in threat.weight_layers(model)] == ["conv1", "fc"]
    with pytest.raises(ValueError, match="does not have"):
        ThreatModel(eps_w=0.01, layers=("nope",)).weight_layers(model)


def test_pgd_runs_on_an_imported_tanh_model(tmp_path: Path) -> None:
    g = Graph((1, 6), 13)
    h = g.op("Tanh", [g.op("Gemm", ["x", g.weight(8, 6, scale=1.0), g.weight(8)], transB=1)])
    model = load_onnx(save(g.model(g.op("Gemm", [h, g.weight(3, 8, scale=1.0), g.weight(3)], transB=1)), tmp_path))
    torch.manual_seed(3)
    x = torch.rand(16, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
    threat = ThreatModel(eps_x=0.3, eps_w=0.05)
    result = PGD(steps=10)(model, x, y, threat)
    assert bool(((result.x_adv - x).abs() <= 0.3 + 1e-6).all())
    assert bool((result.x_adv >= 0).all() and (result.x_adv <= 1).all())
    assert int((result.logits.argmax(1) == y).sum()) < len(y)  # a radius this large flips some


#: Graphs of the import table whose every op has a bound rule (docs/onnx.md's "bounds" column)...
BOUNDABLE = [
    "gemm_trans_b",
    "gemm_alpha_beta",
    "matmul_no_bias",
    "matmul_left_column",
    "conv_basic",
    "conv_groups",
    "conv_strides_dilations",
    "residual",
    "normalise_per_channel",
    "normalise_scalar",
    "constant_affine",
    "batch_norm",
    "batch_norm_1d",
    "flatten_axis0",
    "reshape_constant",
    "squeeze_unsqueeze",
    "transpose_reshape_only",
    "average_pool",
    "average_pool_pads",
    "max_pool",
    "max_pool_pads",
    "global_average_pool",
    "concat_branches",
    "constant_identity_dropout",
    "shape_flatten_pattern",
    "channels_last_flatten",
]
#: ... and those the bounds refuse in one line (attacks still run).
REFUSED = [
    "gemm_two_layers",  # Tanh
    "matmul_add",  # Sigmoid
    "two_tensor_ops",  # Sigmoid, a product of two values
    "conv_asymmetric",  # an explicit pad
    "conv1d",  # an explicit pad
    "transpose_permute",  # a permutation
    "matmul_left_matrix",  # a permutation
    "max_pool_asymmetric",  # an explicit pad
    "clip_relu6_neg",  # Hardtanh
]


@pytest.mark.parametrize("case", BOUNDABLE)
def test_crown_on_imported_graphs_is_exact_at_zero_radius_and_sound_beyond(case: str, tmp_path: Path) -> None:
    from onnx_cases import CASES

    build, shape = CASES[case]
    g = Graph(shape, 13)
    model = load_onnx(save(g.model(build(g)), tmp_path))
    torch.manual_seed(4)
    x = torch.rand(3, *shape[1:])
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    clean = z.gather(1, y[:, None]) - z
    exact = margin_bounds(model, x, y, ThreatModel(eps_x=0.0), "crown").lower
    torch.testing.assert_close(exact, clean, rtol=1e-4, atol=1e-4)
    threat = ThreatModel(eps_x=0.02, eps_w=0.002)
    lower = margin_bounds(model, x, y, threat, "crown").lower
    x_s = (x[None] + (torch.rand(32, *x.shape) * 2 - 1) * 0.02).clamp(0, 1)
    with torch.no_grad():
        z_s = model(x_s.reshape(-1, *shape[1:])).reshape(32, 3, -1)
    margins = z_s.gather(2, y[None, :, None].expand(32, 3, 1)) - z_s
    assert bool((lower[None] <= margins + 1e-4).all())


@pytest.mark.parametrize("case", REFUSED)
def test_bounds_refuse_the_other_imported_graphs_in_one_line(case: str, tmp_path: Path) -> None:
    from onnx_cases import CASES

    build, shape = CASES[case]
    g = Graph(shape, 13)
    model = load_onnx(save(g.model(build(g)), tmp_path))
    x = torch.rand(2, *shape[1:])
    with pytest.raises(ValueError) as info:
        margin_bounds(model, x, torch.zeros(2, dtype=torch.long), ThreatModel(eps_x=0.01), "crown")
    assert "\n" not in str(info.value)


def test_quantization_grids_cover_the_imported_layers(tmp_path: Path) -> None:
    from nonsingular.quantize import QuantizationSpec, nearest_codes, quantization_threat, quantized_accuracy

    model = _residual_cnn(tmp_path)
    threat, grids = quantization_threat(model, QuantizationSpec(bits=8, per_channel=True), ThreatModel(eps_x=0.0))
    assert sorted(grids) == ["conv1", "fc", "head"]
    assert [name for name, _ in threat.channel_eps] == ["conv1", "fc", "head"]
    torch.manual_seed(5)
    x = torch.rand(4, 2, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
    _, correct = quantized_accuracy(model, x, y, grids, nearest_codes(model, grids))
    lower = margin_bounds(model, x, y, threat, "crown").lower
    certified = (lower.masked_fill(torch.nn.functional.one_hot(y, 3).bool(), 1.0) > 0).all(1)
    assert bool(certified.any())  # the int8 box is small: the test would be empty otherwise
    assert bool(correct[certified].all())  # every model on the grid lies in the certified box
