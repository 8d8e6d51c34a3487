"""Auto-PGD (Croce and Hein 2020) on the joint threat.

`APGD` is the PGD loop (`pgd.PGD._optimise`) with another `StepSchedule`: the step starts at twice each
radius, is halved at checkpoints where progress stalled, and the iterate then returns to the best point found;
every step mixes in momentum. It runs over everything the loop perturbs (the input box, Lemma 1's t, explicit
per-example weights, shared weights), in both scopes and both weight balls. With `loss=targeted_dlr(k)` it is
APGD-T towards each example's k-th most likely wrong class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .pgd import PGD

__all__ = ["APGD", "APGDSchedule", "checkpoints"]


def checkpoints(steps: int) -> list[int]:
    """Iterations (1-based, counted after the start) at which APGD checks its progress.

    The first interval is 22% of the budget; each next one is 3% shorter, down to 6% (Croce and Hein's
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)).
    """
    interval = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, at = [], interval
    while at <= steps:
        out.append(at)
        interval = max(interval - shrink, shortest)
        at += interval
    return out


@dataclass
class APGDSchedule:
    """The APGD step-size rule over `rows` independent problems (examples; one in shared scope).

    At each checkpoint a row halves its step and returns to its best point when (1) its loss rose in at most
    `rho` of the steps since the last checkpoint, or (2) its step was not halved at the last checkpoint and its
    best loss has not improved since. The step that returns to the best point moves nothing (its gradient
    there is taken at the next step).
    """

    steps: int
    initial: float
    alpha: float = 0.75
    rho: float = 0.75
    tracks_best: bool = True

    @property
    def momentum(self) -> float:
        return 1.0 - self.alpha

    def start(self, rows: int, device: torch.device) -> None:
        self.eta = torch.full((rows,), self.initial, device=device)
        self.best = torch.full((rows,), -math.inf, dtype=torch.float64, device=device)
        self.best_at_check = self.best.clone()
        self.reduced_at_check = torch.zeros(rows, dtype=torch.bool, device=device)
        self.rises = torch.zeros(rows, device=device)
        self.previous: Tensor | None = None
        self.since_check = 0
        self.checks = iter(checkpoints(self.steps))
        first = next(self.checks, None)
        self.next_check = first
        self.last_check = 0
        self.halvings = 0  # total halvings over rows, for tests and diagnostics

    def observe(self, step: int, loss: Tensor) -> tuple[Tensor | float, Tensor | None, Tensor | None]:
        loss = loss.double()
        improved = loss > self.best
        self.best = torch.where(improved, loss, self.best)
        if self.previous is not None:
            self.rises += (loss > self.previous).float()
        self.previous = loss
        if step == 0:
            self.best_at_check = self.best.clone()
            return self.eta, improved, None
        back = None
        if self.next_check is not None and step == self.next_check:
            interval = step - self.last_check
            stalled = self.rises <= self.rho * interval
            no_progress = ~self.reduced_at_check & (self.best <= self.best_at_check)
            back = stalled | no_progress
            self.eta = torch.where(back, self.eta / 2, self.eta)
            self.halvings += int(back.sum())
            self.reduced_at_check = back
            self.best_at_check = self.best.clone()
            self.rises.zero_()
            self.last_check = step
            self.next_check = next(self.checks, None)
            if not bool(back.any()):
                back = None
        eta = self.eta if back is None else torch.where(back, torch.zeros_like(self.eta), self.eta)
        return eta, improved, back


@dataclass(frozen=True, kw_only=True)
class APGD(PGD):
    """Auto-PGD on the joint threat: the PGD loop with the APGD schedule (see module docstring).

    Args (beyond PGD's; abs_stepsize is not used):
        steps: gradient steps per restart (default 100).
        rel_stepsize: initial step as a fraction of each radius (default 2: the whole diameter).
        alpha: weight of the new step against the previous one (1 - momentum; default 0.75).
        rho: a checkpoint halves the step when the loss rose in at most this fraction of the steps since the
            previous checkpoint (default 0.75).
    """

    steps: int = 100
    alpha: float = 0.75
    rho: float = 0.75

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.abs_stepsize is not None:
            raise ValueError("APGD sets its own step sizes; use rel_stepsize for the initial step, not abs_stepsize")
        if not 0 < self.alpha <= 1 or not 0 < self.rho <= 1:
            raise ValueError(f"alpha and rho must be in (0, 1], got {self.alpha} and {self.rho}")

    @property
    def step_fraction(self) -> float:
        return self.rel_stepsize if self.rel_stepsize is not None else 2.0

    def schedule(self) -> APGDSchedule:
        return APGDSchedule(self.steps, self.step_fraction, self.alpha, self.rho)
