"""The attacks the CLI and the study offer by name ("auto", "pgd"), with their default budgets."""

from __future__ import annotations

from enum import Enum

from .ensemble import AutoEnsemble
from .losses import Loss
from .pgd import PGD

__all__ = ["DEFAULT_STEPS", "AttackKind", "make_attack"]


class AttackKind(str, Enum):
    """The attacks the CLI and the study offer by name."""

    AUTO = "auto"
    PGD = "pgd"


#: steps when none are given: the ensemble's APGD runs, and PGD's fixed-step budget.
DEFAULT_STEPS = {AttackKind.AUTO: 50, AttackKind.PGD: 20}


def make_attack(
    kind: AttackKind | str = AttackKind.AUTO,
    *,
    steps: int | None = None,
    restarts: int = 1,
    loss: Loss | str = Loss.CE,
    rel_stepsize: float | None = None,
    targets: int = 3,
    batch_size: int = 256,
    seed: int = 0,
) -> PGD | AutoEnsemble:
    """The attack a name stands for: "auto" (AutoEnsemble, the default evaluation) or "pgd" (fixed-step PGD).

    loss and rel_stepsize apply to pgd only (the ensemble fixes its losses and schedules); targets to auto only.

    Raises:
        ValueError: an unknown name, or an option the chosen attack does not take.
    """
    try:
        kind = AttackKind(kind)
    except ValueError:
        raise ValueError(f"unknown attack {kind!r}; choose auto or pgd") from None
    steps = DEFAULT_STEPS[kind] if steps is None else steps
    if kind is AttackKind.PGD:
        return PGD(
            steps=steps, restarts=restarts, rel_stepsize=rel_stepsize, loss=loss, batch_size=batch_size, seed=seed
        )
    if Loss(loss) is not Loss.CE or rel_stepsize is not None:
        raise ValueError("the loss and step size options apply to the pgd attack only (auto runs APGD-CE and APGD-T)")
    return AutoEnsemble(steps=steps, restarts=restarts, targets=targets, batch_size=batch_size, seed=seed)
