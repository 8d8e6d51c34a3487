"""Tiny networks, their ONNX files, properties as text, and an exact reference (a mixed-integer program) for the
verification tests; and a campaign runner whose instances take long enough for a test to catch one running."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from nonsingular.verification import VerifyOptions, instance, run_isolated
from nonsingular.verification.result import VerificationResult

#: The instance process's entry point, kept before `slow_instance` replaces it in the process that runs it.
WORKER = instance._worker


def mlp(widths: tuple[int, ...], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def to_onnx(model: nn.Sequential, path: Path, opset: int = 13) -> Path:
    """The MLP as Gemm (transB = 1) + Relu nodes, input (1, n)."""
    nodes, inits, current = [], [], "x"
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for k, layer in enumerate(linears):
        w, b = f"w{k}", f"b{k}"
        inits += [
            numpy_helper.from_array(layer.weight.detach().numpy().astype(np.float32), w),
            numpy_helper.from_array(layer.bias.detach().numpy().astype(np.float32), b),
        ]
        out = f"z{k}"
        nodes.append(helper.make_node("Gemm", [current, w, b], [out], name=f"gemm{k}", transB=1))
        current = out
        if k < len(linears) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"h{k}"], name=f"relu{k}"))
            current = f"h{k}"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, linears[0].in_features])
    y = helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, linears[-1].out_features])
    graph = helper.make_graph(nodes, "mlp", [x], [y], inits)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    path.write_bytes(proto.SerializeToString())
    return path


def vnnlib(lower: list[float], upper: list[float], outputs: int, disjuncts: list[list[tuple[int, int]]]) -> str:
    """A property: the box, and the unsafe region as an `or` of `and`s of Y_i >= Y_j."""
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(len(lower)))
    text += "".join(f"(declare-const Y_{j} Real)\n" for j in range(outputs))
    for i, (lo, hi) in enumerate(zip(lower, upper, strict=True)):
        text += f"(assert (>= X_{i} {float(lo)!r}))\n(assert (<= X_{i} {float(hi)!r}))\n"
    parts = " ".join("(and " + " ".join(f"(>= Y_{a} Y_{b})" for a, b in conj) + ")" for conj in disjuncts)
    return text + f"(assert (or {parts}))\n"


def milp_minimum(model: nn.Sequential, lower: np.ndarray, upper: np.ndarray, c: np.ndarray) -> float:
    """The exact min over the box of c . f(x) for a ReLU MLP (big-M encoding with interval bounds, float64)."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    weights = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in linears]
    n0 = len(lower)
    # Variables: x, then per hidden layer (z, h, a).
    sizes = [n0] + [3 * w.shape[0] for w, _ in weights[:-1]]
    total = sum(sizes)
    lb_v, ub_v, integrality = list(lower), list(upper), [0] * n0
    rows, lo_c, hi_c = [], [], []
    offset, h_index, h_lo, h_hi = n0, list(range(n0)), np.asarray(lower, float), np.asarray(upper, float)
    for w, b in weights[:-1]:
        m = w.shape[0]
        z_lo = np.clip(w, 0, None) @ h_lo + np.clip(w, None, 0) @ h_hi + b
        z_hi = np.clip(w, 0, None) @ h_hi + np.clip(w, None, 0) @ h_lo + b
        z, h, a = offset, offset + m, offset + 2 * m
        lb_v += list(z_lo) + [0.0] * m + [0.0] * m
        ub_v += list(z_hi) + list(np.maximum(z_hi, 0)) + [1.0] * m
        integrality += [0] * (2 * m) + [1] * m
        for i in range(m):
            row = np.zeros(total)  # z_i - W_i h = b_i
            row[z + i] = 1
            row[h_index] -= w[i]
            rows.append(row), lo_c.append(b[i]), hi_c.append(b[i])
            row = np.zeros(total)  # h - z >= 0
            row[h + i], row[z + i] = 1, -1
            rows.append(row), lo_c.append(0.0), hi_c.append(np.inf)
            row = np.zeros(total)  # h - z - l a <= -l   (h <= z - l (1 - a))
            row[h + i], row[z + i], row[a + i] = 1, -1, -z_lo[i]
            rows.append(row), lo_c.append(-np.inf), hi_c.append(-z_lo[i])
            row = np.zeros(total)  # h - u a <= 0
            row[h + i], row[a + i] = 1, -max(z_hi[i], 0.0)
            rows.append(row), lo_c.append(-np.inf), hi_c.append(0.0)
        h_index, h_lo, h_hi = list(range(h, h + m)), np.maximum(z_lo, 0), np.maximum(z_hi, 0)
        offset += 3 * m
    w, b = weights[-1]
    objective = np.zeros(total)
    objective[h_index] = c @ w
    res = milp(
        objective,
        constraints=LinearConstraint(np.array(rows), lo_c, hi_c) if rows else None,
        integrality=np.array(integrality),
        bounds=Bounds(lb_v, ub_v),
        options={"mip_rel_gap": 1e-9},
    )
    if res.status != 0:
        raise RuntimeError(f"MILP failed: {res.message}")
    return float(res.fun + c @ b)


def campaign_bench(folder: Path) -> Path:
    """A benchmark folder for campaign tests: two ONNX MLPs, each with a property that holds (a tight box: unsat)
    and one that does not (the whole plane, where both classes occur: sat), and `instances.csv` listing the
    four instances (timeouts far above the fraction of a second each takes)."""
    lines = []
    for name, seed in (("net_a", 0), ("net_b", 1)):
        model = mlp((2, 8, 8, 2), seed)
        to_onnx(model, folder / f"{name}.onnx")
        with torch.no_grad():
            top = int(model(torch.tensor([[0.2, 0.3]])).argmax())
        tight = vnnlib([0.199, 0.299], [0.201, 0.301], 2, [[(1 - top, top)]])
        (folder / f"{name}_tight.vnnlib").write_text(tight)
        wide = vnnlib([-9.0, -9.0], [9.0, 9.0], 2, [[(1 - top, top)], [(top, 1 - top)]])
        (folder / f"{name}_wide.vnnlib").write_text(wide)
        lines += [f"{name}.onnx,{name}_tight.vnnlib,60\n", f"{name}.onnx,{name}_wide.vnnlib,60\n"]
    (folder / "instances.csv").write_text("".join(lines))
    return folder


def _slow_worker(*args: object) -> None:
    time.sleep(1.0)
    WORKER(*args)


def slow_instance(onnx: Path, vnnlib: Path, timeout: float, options: VerifyOptions) -> VerificationResult:
    """The default runner, its instance process pausing first, so that a test surely finds an instance running
    however fast the machine decides these instances (a fraction of a second). A module-level function of an
    importable module: Ray workers (whose path holds this checkout) unpickle it by reference."""
    instance._worker = _slow_worker  # the fork looks it up when it starts the instance process
    return run_isolated(onnx, vnnlib, timeout, options)
