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
    """

    lower: Tensor
    y: Tensor
    clean_logits: Tensor
    method: BoundMethod

    @property
    def worst(self) -> Tensor:
        """(N,) smallest margin lower bound over the wrong classes; > 0 means certified."""
        others = self.lower.masked_fill(F.one_hot(self.y, self.lower.shape[1]).bool(), float("inf"))
        return others.amin(dim=1)

    @property
    def certified(self) -> Tensor:
        """(N,) bool: every margin is provably positive, so no (x', W') in the threat set changes the prediction."""
        return self.worst > 0

    def loss_increase_bound(self) -> Tensor:
        """(N,) upper bound on l(z', y) - l(z, y) for the cross-entropy loss (see `loss_bound_from_margins`)."""
        clean = F.cross_entropy(self.clean_logits, self.y, reduction="none")
        return loss_bound_from_margins(self.lower, self.y) - clean


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
