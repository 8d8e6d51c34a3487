"""What every bound method returns: lower bounds on the margins z_y - z_k, and what follows from them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BoundMethod", "MarginBounds", "loss_bound_from_margins", "margin_spec"]


class BoundMethod(str, Enum):
    """How margins are bounded: Theorem 2's norm bound, interval propagation, CROWN-style linear relaxation, or
    CROWN with optimised lower ReLU slopes (alpha-CROWN)."""

    NORM = "norm"
    IBP = "ibp"
    CROWN = "crown"
    ALPHA_CROWN = "alpha-crown"


@dataclass
class MarginBounds:
    """Per-example margin lower bounds under a threat.

    Attributes:
        lower: (N, K) lower bound on z'_y - z'_k over the threat set; lower[i, y_i] = 0 (a class's margin to
            itself).
        y: (N,) labels the margins are taken to.
        clean_logits: (N, K) logits of the unperturbed model, in the dtype the bound was computed in.
        method: which bound produced `lower`.
        execution_error: (N, K) bound on how far each margin of the model as executed (its own dtype, any
            summation order; bounds/rounding.py) can be from the exact-arithmetic margin; 0 at y. None when it
            was not computed (then `worst` and `certified` speak of exact arithmetic only).
    """

    lower: Tensor
    y: Tensor
    clean_logits: Tensor
    method: BoundMethod
    execution_error: Tensor | None = None

    @property
    def executed_lower(self) -> Tensor:
        """(N, K) lower bounds on the margins of the model as executed: lower - execution_error."""
        return self.lower if self.execution_error is None else self.lower - self.execution_error

    @property
    def worst(self) -> Tensor:
        """(N,) smallest margin lower bound of the executed model over the wrong classes; > 0 means certified."""
        return _worst(self.executed_lower, self.y)

    @property
    def worst_exact(self) -> Tensor:
        """(N,) smallest exact-arithmetic margin lower bound (ignoring the execution's rounding)."""
        return _worst(self.lower, self.y)

    @property
    def certified(self) -> Tensor:
        """(N,) bool: every margin of the executed model is provably positive, so no (x', W') in the threat set
        changes its prediction."""
        return self.worst > 0

    @property
    def removed_by_rounding(self) -> Tensor:
        """(N,) bool: certified in exact arithmetic, but not once the execution's rounding is accounted for."""
        return (self.worst_exact > 0) & ~self.certified

    def loss_increase_bound(self) -> Tensor:
        """(N,) upper bound on l(z', y) - l(z, y) for the cross-entropy loss (see `loss_bound_from_margins`)."""
        clean = F.cross_entropy(self.clean_logits, self.y, reduction="none")
        return loss_bound_from_margins(self.executed_lower, self.y) - clean


def _worst(lower: Tensor, y: Tensor) -> Tensor:
    others = lower.masked_fill(F.one_hot(y, lower.shape[1]).bool(), float("inf"))
    return others.amin(dim=1)


def margin_spec(y: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """(N, K, K) rows e_y - e_k: the linear map from logits to the K margins of each example."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y][:, None, :] - eye[None, :, :]


def loss_bound_from_margins(lower: Tensor, y: Tensor) -> Tensor:
    """(N,) upper bound on the cross-entropy l(z', y) = log sum_k exp(-(z'_y - z'_k)) given margin lower bounds.

    The loss is decreasing in every margin, so substituting the lower bounds bounds it from above.
    """
    lower = lower.masked_fill(F.one_hot(y, lower.shape[1]).bool(), 0.0)
    return torch.logsumexp(-lower, dim=1)
