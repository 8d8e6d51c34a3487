"""CROWN-style backward linear relaxation under the joint threat, over the traced graph (engine.py).

A lower bound on a linear function A z of a node's output is carried backward as A' h + c over the inputs, down
to the input box, where it is minimised in closed form; the rules are in ops_*.py (weight layers: Lemma 1 for a
fixed A, the per-position relaxation for convolutions; ReLU: CROWN's triangle relaxation). Every box a
non-linearity relaxes is tightened by the same backward pass, and the final margins are the better of CROWN's
and IBP's, so the result is never looser than `ibp_margin_bounds`.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..threat import ThreatModel
from .margin_driver import graph_margin_bounds
from .margins import BoundMethod, MarginBounds
from .registry import DEFAULT_MEMORY_MB

__all__ = ["alpha_crown_margin_bounds", "crown_margin_bounds"]


def crown_margin_bounds(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, memory_mb: float = DEFAULT_MEMORY_MB
) -> MarginBounds:
    """Margin lower bounds by backward linear relaxation; never looser than IBP.

    Args:
        model: any traceable model whose ops have CROWN rules (MLPs, CNNs, residual nets with BatchNorm).
        x: (N, *input_shape) in threat.domain; bounds are computed in x's dtype.
        y: (N,) labels.
        threat: per-example joint threat (bounds hold for the shared scope too, a subset).
        memory_mb: budget for one chunk's coefficient tensors, MiB.
    """
    return graph_margin_bounds(model, x, y, threat, BoundMethod.CROWN, memory_mb=memory_mb)


def alpha_crown_margin_bounds(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    steps: int = 20,
    memory_mb: float = DEFAULT_MEMORY_MB,
) -> MarginBounds:
    """CROWN with lower ReLU slopes optimised per example and margin (`steps` projected Adam steps); never looser
    than CROWN. Not differentiable in the weights.
    """
    return graph_margin_bounds(model, x, y, threat, BoundMethod.ALPHA_CROWN, memory_mb=memory_mb, alpha_steps=steps)
