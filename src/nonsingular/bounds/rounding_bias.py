"""Bound the model as it is executed in float32, not only in exact arithmetic (THEORY.md section 13).

A dot product of n terms in floating point with unit roundoff u is within gamma_n sum |w_i h_i| of the exact
value in any summation order (fused multiply-adds included), gamma_n = n u / (1 - n u); adding the bias is one
more rounding. So the executed network is the exact network with every Linear/Conv layer's bias moved by some
delta, |delta| <= gamma_{n+1} (|W'| |h| + |b'|), h the layer's executed input: a bias ball, which every bound rule
already carries (a LayerThreat's `beta`), backward passes included, so CROWN sees the cancellations a forward
error recursion misses (on a 784-256x6-10 MLP a forward recursion |W| e gives errors of 10^5). GraphBounds sets
each layer's radius from its input box as it builds the boxes (CROWN-tightened where it tightens), so every
later box already holds the executed network. Reading the input as float32 moves it by at most u |x|: the input
box is widened by that. ReLU, max-pool, reshapes and identities are exact in floating point; any other op
between weight layers (an add, a scale, a normalisation) rounds too and is refused here (UnsupportedLayerError):
the caller then has no bound on the executed model and must say so. Convolutions computed by transformed
algorithms (Winograd, FFT) are outside this bound.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from ..threat import WeightBall
from .graph import Graph
from .layer_threat import LayerThreat, UnsupportedLayerError, apply_weight
from .ops_nonlinear import MaxPoolRule, ReLURule
from .ops_structure import IdentityRule, ReshapeRule
from .registry import Box

__all__ = ["FLOAT32_UNIT_ROUNDOFF", "check_roundable", "read_rounding", "rounded_threat"]

#: Unit roundoff of float32 (round to nearest).
FLOAT32_UNIT_ROUNDOFF = 2.0**-24

_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def check_roundable(graph: Graph) -> None:
    """Refuse graphs with an op whose rounding this analysis does not carry (see the module docstring)."""
    for node in graph.nodes:
        if node.name == graph.input or isinstance(node.module, _WEIGHT_LAYERS):
            continue
        if not isinstance(node.rule, ReLURule | MaxPoolRule | IdentityRule | ReshapeRule):
            raise UnsupportedLayerError(
                f"the float32 rounding analysis covers Linear/Conv, ReLU, max-pool and reshapes; op '{node.name}' "
                f"({node.kind}) rounds too"
            )


def read_rounding(lower: Tensor, upper: Tensor, u: float) -> Box:
    """The input box widened by the rounding of reading it in the execution precision."""
    e = u * torch.maximum(lower.abs(), upper.abs())
    return lower - e, upper + e


def _gamma(n: int, u: float) -> float:
    if n * u >= 1:
        raise UnsupportedLayerError(f"a dot product of {n} terms is beyond the rounding analysis in this precision")
    return n * u / (1 - n * u)


def _fan_in(module: Any) -> int:
    if isinstance(module, nn.Linear):
        return int(module.in_features)
    return int(module.in_channels // module.groups * math.prod(module.kernel_size))


def rounded_threat(module: Any, name: str, lt: LayerThreat | None, box: Box, u: float) -> LayerThreat:
    """The layer's threat with the rounding of computing it (for inputs in `box`) added to its bias radius.

    The radius is the largest over examples and, for convolutions, over positions: one (out,) vector.
    """
    lb, ub = box
    dtype = lb.dtype
    w = module.weight.detach().to(dtype).abs()
    if lt is not None and lt.rho is not None:
        w = w + lt.rho.detach()
    elif lt is not None and lt.ball is WeightBall.OPERATOR:
        w = w + lt.operator_radius().detach()  # a row's whole l1 budget may sit on one entry
    b = torch.zeros(w.shape[0], dtype=dtype) if module.bias is None else module.bias.detach().to(dtype).abs()
    if lt is not None and lt.beta is not None:
        b = b + lt.beta.detach()
    h = torch.maximum(lb.abs(), ub.abs()).detach()
    shape = (-1,) if isinstance(module, nn.Linear) else (-1, *([1] * (h.dim() - 2)))
    delta = _gamma(_fan_in(module) + 1, u) * (apply_weight(module, h, w) + b.reshape(shape))
    extra = delta.amax(0) if isinstance(module, nn.Linear) else delta.transpose(0, 1).reshape(w.shape[0], -1).amax(1)
    if lt is None:
        lt = LayerThreat(
            name=name,
            ball=WeightBall.ELEMENTWISE,
            rho=torch.zeros_like(module.weight, dtype=dtype),
            e=None,
            beta=None,
            uniform=0.0,
            out_features=int(w.shape[0]),
        )
    return dataclasses.replace(lt, beta=extra if lt.beta is None else lt.beta + extra)
