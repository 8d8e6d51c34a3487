"""Rewrites of the converted steps that keep the function and let the bound engine follow it.

Models exported from channels-last frameworks (TensorFlow via tf2onnx) transpose the feature map to
(H, W, C) before flattening it into a dense layer. The bounds have no rule for a permutation, but a permutation
followed by a flatten and a Linear is that Linear with its input columns permuted: the Permute goes, the Linear
keeps its name and output channels (so layer names, per-channel radii and quantization are unchanged) and reads
the flattened channels-first map.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .context import ParamSource, Step
from .layers import Permute, Reshape

__all__ = ["fold_permutations"]


def _flattens(step: Step) -> bool:
    """Whether `step` flattens each example into a vector."""
    m = step.module
    if isinstance(m, nn.Flatten):
        return m.start_dim == 1 and m.end_dim == -1
    return isinstance(m, Reshape) and len(m.shape) == 1


def fold_permutations(
    steps: list[Step], output: str, sources: dict[int, dict[str, ParamSource]] | None = None
) -> list[Step]:
    """`steps` with every Permute -> flatten -> Linear chain (each value read once) replaced by flatten ->
    Linear with permuted input columns (noted in the Linear's weight source, if `sources` has it)."""
    reads: dict[str, int] = {output: 1}
    for s in steps:
        for i in s.inputs:
            reads[i] = reads.get(i, 0) + 1
    by_input = {s.inputs[0]: s for s in steps if len(s.inputs) == 1}
    drop: set[int] = set()
    for perm in steps:
        if not isinstance(perm.module, Permute) or reads.get(perm.output) != 1:
            continue
        flat = by_input.get(perm.output)
        if flat is None or not _flattens(flat) or reads.get(flat.output) != 1:
            continue
        lin = by_input.get(flat.output)
        if lin is None or not isinstance(lin.module, nn.Linear):
            continue
        shape = perm.shapes[0]  # one example, before the permutation
        # the flattened permuted map's entry j is the flattened original's entry index[j]
        index = torch.arange(math.prod(shape)).reshape(shape).permute(*(d - 1 for d in perm.module.dims)).reshape(-1)
        with torch.no_grad():
            weight = torch.empty_like(lin.module.weight)
            weight[:, index] = lin.module.weight
            lin.module.weight.copy_(weight)
        source = (sources or {}).get(id(lin.module), {}).get("weight")
        if source is not None:  # the parameter's column index[j] holds what was column j
            source.columns = index if source.columns is None else index[source.columns]
        flat.inputs = list(perm.inputs)
        flat.shapes = list(perm.shapes)
        drop.add(id(perm))
    return [s for s in steps if id(s) not in drop]
