"""One entry point for every bound method: `margin_bounds(model, x, y, threat, method=...)`."""

from __future__ import annotations

from torch import Tensor, nn

from ..threat import ThreatModel
from .crown import crown_margin_bounds
from .ibp import ibp_margin_bounds
from .margins import BoundMethod, MarginBounds
from .norm import norm_margin_bounds

__all__ = ["margin_bounds"]

_METHODS = {
    BoundMethod.NORM: norm_margin_bounds,
    BoundMethod.IBP: ibp_margin_bounds,
    BoundMethod.CROWN: crown_margin_bounds,
}


def margin_bounds(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, method: BoundMethod | str = BoundMethod.CROWN
) -> MarginBounds:
    """Lower bounds on every margin z'_y - z'_k over the per-example joint threat set.

    Computed in x's dtype (pass float64 inputs for certificates whose rounding is negligible; the weights are
    cast, the model is never modified) and differentiable in the model's parameters.

    Args:
        model: nn.Sequential classifier. norm: feed-forward ReLU networks (Linear/Conv, pooling);
            ibp: any layer with a rule in IBP_RULES; crown: MLPs (Normalize, Flatten, Linear, ReLU).
        x: (N, *input_shape) in threat.domain.
        y: (N,) labels.
        threat: the threat set; bounds are per-example, hence also valid for the shared scope.
        method: "norm" (Theorem 2), "ibp" or "crown".

    Raises:
        ValueError: an unknown method, mismatched shapes, or a layer the method cannot bound
            (UnsupportedLayerError, which names the layer and what to implement).
    """
    try:
        method = BoundMethod(method)
    except ValueError:
        raise ValueError(f"unknown bound method {method!r}; choose one of {[m.value for m in BoundMethod]}") from None
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    return _METHODS[method](model, x, y, threat)
