"""Counterexamples are claimed only after an independent check: the point lies inside the box exactly (compared
in float64 with the bounds as parsed), and the output constraint holds when a reference runtime executes the
model on that point in float32 (onnxruntime on the ONNX file; torch in float32 for models given as modules).

The value written to the result file must be the value checked. An attack's float32 point is moved onto a float32
number inside [lower, upper] (one ulp inwards where rounding pushed it out); a zero-width dimension whose bound
has no float32 representation keeps the float64 bound itself, and the runtime executes its float32 rounding, as
the VNN-COMP checker does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError, blame
from ..properties import Case
from .result import Counterexample

__all__ = ["Executor", "onnx_executor", "snap_into_box", "torch_executor", "try_witness"]

#: (N, *input_shape) float32 inputs -> (N, num_outputs) float32 outputs, computed independently of the bounds.
Executor = Callable[[np.ndarray], np.ndarray]


def torch_executor(model: nn.Module) -> Executor:
    """Run `model` in float32 under no_grad (a weaker reference than onnxruntime: the same module the attack used)."""

    def run(x: np.ndarray) -> np.ndarray:
        # One example per call, as a checker runs a counterexample: a batch may round differently.
        xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        with torch.no_grad():
            outs = [model(xs[i : i + 1]).reshape(1, -1).to(torch.float32) for i in range(len(xs))]
        return torch.cat(outs).numpy()

    return run


def onnx_executor(path: str | Path) -> Executor:
    """onnxruntime on the ONNX file, on CPU, one example per call when the graph fixes a batch of 1."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    with blame(f"{path}: onnxruntime cannot load it"):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise InputError(f"{path}: the model takes {len(inputs)} inputs; one is supported")
    name, shape = inputs[0].name, inputs[0].shape
    fixed_one = bool(shape) and shape[0] == 1

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if fixed_one:
            outs = [session.run(None, {name: x[i : i + 1].reshape([1, *shape[1:]])})[0] for i in range(len(x))]
            out = np.concatenate([o.reshape(1, -1) for o in outs])
        else:
            out = session.run(None, {name: x.reshape([len(x), *shape[1:]])})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(x), -1)

    return run


def snap_into_box(x: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """(N, n) float64 values inside [lower, upper] exactly, float32-representable wherever the box allows.

    x: (N, n) any float points (clamped to the box first).
    """
    lo, hi = lower.to(torch.float64), upper.to(torch.float64)
    x = torch.minimum(torch.maximum(x.to(torch.float64), lo), hi)
    x32 = x.to(torch.float32)
    up = torch.nextafter(x32, torch.tensor(float("inf"), dtype=torch.float32))
    down = torch.nextafter(x32, torch.tensor(float("-inf"), dtype=torch.float32))
    x32 = torch.where(x32.double() < lo, up, torch.where(x32.double() > hi, down, x32))
    inside = (x32.double() >= lo) & (x32.double() <= hi)
    return torch.where(inside, x32.double(), x)


def try_witness(
    candidates: Tensor, case: Case, case_index: int, run: Executor, input_shape: tuple[int, ...], checked_by: str
) -> Counterexample | None:
    """The first candidate (N, n) that, snapped into the box, the reference runtime maps into the case's unsafe
    region; None if none does."""
    if len(candidates) == 0:
        return None
    x = snap_into_box(candidates.reshape(len(candidates), -1), case.lower, case.upper)
    if not bool(case.contains(x).all()):  # snap_into_box guarantees it; a failure here is a bug
        raise RuntimeError("a snapped counterexample left its box")
    y = torch.from_numpy(run(x.to(torch.float32).reshape(len(x), *input_shape).numpy())).to(torch.float64)
    for i in range(len(x)):
        for j, conj in enumerate(case.unsafe):
            v = conj.violation(y[i : i + 1])
            if bool(torch.isfinite(y[i]).all()) and float(v[0]) <= 0:
                return Counterexample(x=x[i], y=y[i], case=case_index, conjunction=j, checked_by=checked_by)
    return None
