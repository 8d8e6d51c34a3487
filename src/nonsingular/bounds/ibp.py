"""Interval bound propagation under the joint threat (THEORY.md section 5), over the traced graph (engine.py).

Every op has one rule in the registry (registry.py); a weight layer's box adds the Lemma 1 term maximised over
the input box.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Normalize
from ..threat import ThreatModel
from .layer_threat import LayerThreat, UnsupportedLayerError
from .margin_driver import graph_margin_bounds
from .margins import BoundMethod, MarginBounds
from .registry import Box

__all__ = ["ibp_margin_bounds"]


def ibp_margin_bounds(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, *, rounding: bool = True
) -> MarginBounds:
    """Margin lower bounds by interval propagation, the last Linear layer folded into the margin.

    Args:
        model: any traceable model whose ops have rules (nn.Sequential, CNNs, residual nets).
        x: (N, *input_shape) in threat.domain; bounds are computed in x's dtype.
        y: (N,) labels.
        threat: per-example joint threat (a shared-scope threat is a subset, so the bounds hold for it too).
        rounding: also bound the executed model's floating-point error (MarginBounds.execution_error); off for
            training losses, which certify nothing.
    """
    return graph_margin_bounds(model, x, y, threat, BoundMethod.IBP, rounding=rounding)


def finish_margins(lower: Tensor, y: Tensor) -> Tensor:
    """Set the margin of each example's own class to exactly 0."""
    return lower.masked_fill(F.one_hot(y, lower.shape[1]).bool(), 0.0)


def propagate_boxes(
    layers: Sequence[tuple[str, nn.Module]], threats: dict[str, LayerThreat], lb: Tensor, ub: Tensor
) -> list[Box]:
    """Boxes through leading box-exact layers of a chain (Normalize, Flatten, Identity, Dropout), for norm.py."""
    boxes = [(lb, ub)]
    for name, module in layers:
        lo, hi = boxes[-1]
        if isinstance(module, Normalize):
            a, b = module(lo), module(hi)
            boxes.append((torch.minimum(a, b), torch.maximum(a, b)))
        elif isinstance(module, nn.Flatten):
            boxes.append((module(lo), module(hi)))
        elif isinstance(module, nn.Identity | nn.Dropout):
            boxes.append((lo, hi))
        else:
            raise UnsupportedLayerError(f"layer '{name}' ({type(module).__name__}) does not map a box onto a box")
    return boxes
