"""The attack protocol every consumer depends on, and the torchattacks-style adapter around it.

Evaluation, certification, radii and the study take an `Attack` (configuration only; the model, data and threat
come at call time) and read its `AttackResult`; PGD, APGD and the ensemble implement it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from ..threat import ThreatModel
from .result import AttackResult

__all__ = ["Attack", "Progress", "StepSchedule", "TorchattacksAdapter"]

Progress = Callable[[int, int], None]


class Attack(Protocol):
    """What evaluation, certification, radii and the study need of an attack.

    Called as attack(model, x, y, threat) -> AttackResult; `batch_size` is the number of examples per forward
    pass (distributed runs split the examples in whole batches). The repr names the attack and its budget.
    """

    batch_size: int

    def budget(self) -> dict[str, int]:
        """The attack's budget as numbers (steps, restarts, ...), recorded next to its repr in results."""
        ...

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        progress: Progress | None = None,
        *,
        first_index: int = 0,
        sync_ranks: bool = False,
    ) -> AttackResult: ...


class StepSchedule(Protocol):
    """How the step size evolves over one restart of the PGD loop (the hook APGD overrides).

    Rows are the independent problems: each example in per-example scope, one in shared scope.
    """

    @property
    def momentum(self) -> float:
        """Weight of the previous step in each update (0: plain projected steps, as in PGD)."""
        ...

    @property
    def tracks_best(self) -> bool:
        """Keep (and return to) the highest-loss point of every step, not only the final iterate."""
        ...

    def start(self, rows: int, device: torch.device) -> None:
        """A new restart on `rows` problems."""
        ...

    def observe(self, step: int, loss: Tensor) -> tuple[Tensor | float, Tensor | None, Tensor | None]:
        """After the forward pass of step `step` (0-based) with per-row loss (rows,) at the current point.

        Returns:
            (step size for the coming step: a number or (rows,) as a fraction of each radius; rows whose loss is
            the highest of the restart so far (None: not tracked); rows to send back to their best point
            before the step (None: none)).
        """
        ...


class TorchattacksAdapter:
    """The torchattacks call style: `atk = TorchattacksAdapter(PGD(), model, threat); x_adv = atk(x, y)`.

    Weight perturbations, if the threat has any, are kept in `last_result` (torchattacks only returns inputs).
    """

    def __init__(self, attack: Attack, model: nn.Module, threat: ThreatModel) -> None:
        self.attack, self.model, self.threat = attack, model, threat
        self.last_result: AttackResult | None = None

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        self.last_result = self.attack(self.model, x, y, self.threat)
        return self.last_result.x_adv
