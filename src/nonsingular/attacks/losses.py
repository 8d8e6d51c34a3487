"""What an attack ascends: per-example objectives on the logits, by name.

An `AttackLoss` maps (logits (n, K), labels (n,), clean logits (n, K) or None) to a per-example loss (n,) that
the attack maximises. The named presets are registered in `LOSSES`; `register_loss` adds one more (a new
attack objective is one function plus its registration):

    register_loss(AttackLoss("my-loss", lambda logits, y, clean: ...))
    PGD(loss="my-loss")

`uses_clean` asks the attack for the model's logits at the clean point of each example (computed once per
batch, in eval mode): TRADES' KL term and the targeted DLR loss need them. `seeks_errors` says whether a
misclassified point is the goal: when it is, the attack keeps each example's first misclassified point;
otherwise (a KL to the clean prediction) it keeps the point of highest loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSSES", "AttackLoss", "Loss", "per_example", "register_loss", "resolve_loss", "targeted_dlr"]

#: (logits (n, K), y (n,), clean logits (n, K) or None) -> (n,)
LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


class Loss(str, Enum):
    """Names of the preset losses (what configs and the CLI accept)."""

    CE = "ce"
    MARGIN = "margin"
    KL_CLEAN = "kl-clean"
    DLR = "dlr"


@dataclass(frozen=True)
class AttackLoss:
    """A named per-example objective for the attacks.

    Attributes:
        name: how reports and reprs name it.
        fn: (logits, y, clean logits or None) -> (n,) loss to maximise.
        uses_clean: fn needs the clean logits (else it gets None).
        seeks_errors: a misclassified point is the goal (keep the first one found); else keep the highest loss.
    """

    name: str
    fn: LossFn
    uses_clean: bool = False
    seeks_errors: bool = True

    def __call__(self, logits: Tensor, y: Tensor, clean_logits: Tensor | None = None) -> Tensor:
        return self.fn(logits, y, clean_logits)

    def __repr__(self) -> str:
        return self.name


def _ce(logits: Tensor, y: Tensor, _clean: Tensor | None) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _z_y_and_best_other(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return z_y, others.amax(dim=1)


def _margin(logits: Tensor, y: Tensor, _clean: Tensor | None) -> Tensor:
    """max_{k != y} z_k - z_y (Carlini-Wagner)."""
    z_y, best_other = _z_y_and_best_other(logits, y)
    return best_other - z_y


def _kl_clean(logits: Tensor, y: Tensor, clean: Tensor | None) -> Tensor:
    """KL(softmax(clean) || softmax(logits)) per example (TRADES' inner maximisation)."""
    assert clean is not None  # uses_clean guarantees it
    target = F.softmax(clean, dim=1)
    return F.kl_div(F.log_softmax(logits, dim=1), target, reduction="none").sum(dim=1)


def _check_classes(logits: Tensor, need: int, name: str) -> None:
    if logits.shape[1] < need:
        raise ValueError(f"the {name} loss needs at least {need} classes, the model has {logits.shape[1]}")


def _dlr(logits: Tensor, y: Tensor, _clean: Tensor | None) -> Tensor:
    """Difference of logits ratio (Croce and Hein 2020): -(z_y - max_{k != y} z_k) / (z_pi1 - z_pi3).

    Invariant to shifting and scaling the logits, so a saturated softmax does not flatten its gradient.
    """
    _check_classes(logits, 3, "dlr")
    top = logits.topk(3, dim=1).values
    z_y, best_other = _z_y_and_best_other(logits, y)
    return (best_other - z_y) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr(rank: int) -> AttackLoss:
    """Targeted DLR towards each example's `rank`-th most likely wrong class by its clean logits (rank >= 1).

    loss = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), t the class with the (rank + 1)-th largest clean logit.
    """
    if rank < 1:
        raise ValueError(f"target rank must be >= 1, got {rank}")

    def fn(logits: Tensor, y: Tensor, clean: Tensor | None) -> Tensor:
        assert clean is not None  # uses_clean guarantees it
        _check_classes(logits, max(4, rank + 1), "targeted dlr")
        target = clean.argsort(dim=1, descending=True)[:, rank]
        top = logits.topk(4, dim=1).values
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        z_t = logits.gather(1, target[:, None]).squeeze(1)
        return (z_t - z_y) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)

    return AttackLoss(f"dlr-t{rank}", fn, uses_clean=True)


LOSSES: dict[str, AttackLoss] = {}


def register_loss(loss: AttackLoss) -> AttackLoss:
    """Make `loss` available by its name (PGD(loss=name), configs); refuses to replace a registered name."""
    if loss.name in LOSSES:
        raise ValueError(f"an attack loss named {loss.name!r} is already registered")
    LOSSES[loss.name] = loss
    return loss


for _preset in (
    AttackLoss(Loss.CE.value, _ce),
    AttackLoss(Loss.MARGIN.value, _margin),
    AttackLoss(Loss.KL_CLEAN.value, _kl_clean, uses_clean=True, seeks_errors=False),
    AttackLoss(Loss.DLR.value, _dlr),
):
    register_loss(_preset)


def resolve_loss(loss: str | Loss | AttackLoss) -> AttackLoss:
    """The AttackLoss a name (or preset) stands for; one-line error naming the known ones."""
    if isinstance(loss, AttackLoss):
        return loss
    name = loss.value if isinstance(loss, Loss) else str(loss)
    if name not in LOSSES:
        raise ValueError(f"unknown attack loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name]


def per_example(values: Tensor) -> Tensor:
    """Checks a loss gave one finite-or-not value per example (a shape slip would broadcast silently)."""
    if values.dim() != 1:
        raise ValueError(f"an attack loss must return one value per example, got shape {tuple(values.shape)}")
    return values
