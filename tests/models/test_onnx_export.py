"""Changed weights of an imported model written back into a copy of its ONNX file: onnxruntime on the copy
computes what the module with those weights computes (the export undoes transposes, Gemm's alpha and beta,
fused biases and folded permutations), and what cannot be written back is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto
from onnx_cases import CASES
from onnx_graphs import Graph, run_ort, save

from nonsingular.onnx_import import OnnxImportError, export_onnx, import_onnx


def _perturbed(imported, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = dict(imported.model.named_parameters())
    return {name: params[name] + 0.05 * torch.randn(params[name].shape, generator=g) for name in imported.sources}


@pytest.mark.parametrize(
    "case",
    [
        "gemm_two_layers",
        "gemm_no_trans",
        "gemm_alpha_beta",
        "matmul_add",
        "matmul_left_column",
        "conv_basic",
        "conv_asymmetric",
        "residual",
        "channels_last_flatten",
    ],
)
def test_exported_weights_run_in_onnxruntime_as_in_the_module(case: str, tmp_path: Path) -> None:
    build, shape = CASES[case]
    g = Graph(shape, 13)
    path = save(g.model(build(g)), tmp_path)
    imported = import_onnx(path)
    assert imported.sources, "no parameter traced back to the file"
    new = _perturbed(imported)
    out = tmp_path / "worst" / "m.onnx"
    export_onnx(path, imported, new, out)
    x = np.random.default_rng(2).normal(size=(3, *shape[1:])).astype(np.float32)
    with torch.no_grad():
        expected = torch.func.functional_call(imported.model, new, (torch.from_numpy(x),)).numpy()
    np.testing.assert_allclose(run_ort(out, x), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(run_ort(path, x) - expected).max() > 1e-3  # the weights did change the function


def test_parameters_that_are_not_one_initializer_are_refused(tmp_path: Path) -> None:
    g = Graph((1, 6), 13)
    h = g.op("Gemm", ["x", g.weight(5, 6), g.const(np.float32(0.5).reshape(1))], transB=1)  # a broadcast bias
    path = save(g.model(h), tmp_path)
    imported = import_onnx(path)
    name = next(n for n, _ in imported.model.named_parameters() if n.endswith("bias"))
    with pytest.raises(OnnxImportError, match="does not hold one initializer"):
        export_onnx(path, imported, {name: torch.zeros(5)}, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_tied_weights_given_different_values_are_refused(tmp_path: Path) -> None:
    g = Graph((1, 6), 13)
    w = g.weight(6, 6)
    h = g.op("Gemm", [g.op("Gemm", ["x", w], transB=1), w], transB=1)
    path = save(g.model(h), tmp_path)
    imported = import_onnx(path)
    names = [n for n in imported.sources if n.endswith("weight")]
    assert len(names) == 2
    params = dict(imported.model.named_parameters())
    same = {n: params[n] + 0.1 for n in names}
    export_onnx(path, imported, same, tmp_path / "same.onnx")  # the same value for both: fine
    with pytest.raises(OnnxImportError, match="shared by layers"):
        export_onnx(path, imported, {names[0]: params[names[0]], names[1]: params[names[1]] + 0.1}, tmp_path / "o")


def test_external_data_is_written_inline(tmp_path: Path) -> None:
    g = Graph((1, 6), 13)
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[6, 3], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "w.bin"), ("length", str(6 * 3 * 4))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    g.inits.append(w)
    (tmp_path / "w.bin").write_bytes(np.arange(18, dtype=np.float32).tobytes())
    path = save(g.model(g.op("MatMul", ["x", "w"])), tmp_path)
    imported = import_onnx(path)
    out = tmp_path / "elsewhere" / "m.onnx"
    export_onnx(path, imported, {}, out)
    x = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
    np.testing.assert_allclose(run_ort(out, x), run_ort(path, x), rtol=0, atol=0)
