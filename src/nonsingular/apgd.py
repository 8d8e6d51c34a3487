"""Auto-PGD (Croce and Hein 2020) on the joint threat, and the ensemble that is the default evaluation.

`APGD` is the PGD loop (`attacks.PGD._optimise`) with another `StepSchedule`: the step starts at twice each
radius, is halved at checkpoints where progress stalled, and the iterate then returns to the best point found;
every step mixes in momentum. It runs over everything the loop perturbs (the input box, Lemma 1's t, explicit
per-example weights, shared weights), in both scopes and both weight balls. With `loss=targeted_dlr(k)` it is
APGD-T towards each example's k-th most likely wrong class.

`AutoEnsemble` runs APGD-CE, then APGD-T (one run per target class) on the examples still standing, and
keeps each example's worst *verified* result (shared scope: the one run with the fewest verified-correct
examples, since one perturbation must serve every input).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed as dist
from .attacks import PGD, AttackResult, Progress
from .losses import Loss, targeted_dlr
from .threat import Scope, ThreatModel
from .verify import verify

__all__ = ["APGD", "APGDSchedule", "AttackKind", "AutoEnsemble", "checkpoints", "make_attack"]


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


@dataclass(frozen=True, kw_only=True)
class AutoEnsemble:
    """APGD-CE, then APGD-T (targeted DLR, one run per target class) on the examples still standing.

    Each example keeps its worst verified result: a later attack's point replaces an earlier one only where the
    verifier confirms a misclassification inside the threat set. In shared scope every part attacks all
    examples (one perturbation must serve them all) and the part with the fewest verified-correct examples is
    kept; there APGD-T runs for the first target only (`SHARED_TARGETS`): each target costs a whole run, and on
    the digits models further targets moved no shared cell (BENCHMARKS.md).

    Args:
        steps: APGD steps of every part.
        restarts: APGD-CE restarts.
        targets: APGD-T target classes (the 2nd .. (targets+1)-th most likely by the clean logits; capped at
            classes - 1); 0 runs APGD-CE only.
        batch_size: examples per forward pass.
        memory_budget_mb: cap on explicit per-example weight tensors.
        seed: random-start seed (part i uses seed + i).
    """

    SHARED_TARGETS = 1

    steps: int = 50
    restarts: int = 1
    targets: int = 3
    batch_size: int = 256
    memory_budget_mb: float = 1024.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.restarts < 1 or self.batch_size < 1:
            raise ValueError(
                f"steps, restarts and batch_size must be >= 1 (got {self.steps}, {self.restarts}, {self.batch_size})"
            )
        if self.targets < 0:
            raise ValueError(f"targets must be >= 0, got {self.targets}")
        if not self.memory_budget_mb > 0:
            raise ValueError(f"memory_budget_mb must be > 0, got {self.memory_budget_mb}")

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"

    def budget(self, classes: int | None = None) -> dict[str, int]:
        """Steps, restarts and targets (per-example and shared scope), and the most gradient steps one example
        can take in per-example scope (for reports)."""
        targets = self.targets if classes is None else min(self.targets, max(classes - 1, 0))
        return {
            "steps": self.steps,
            "restarts": self.restarts,
            "targets": targets,
            "shared_targets": min(targets, self.SHARED_TARGETS),
            "max_gradient_steps_per_example": self.steps * (self.restarts + targets),
        }

    def parts(self, classes: int, shared: bool = False) -> list[APGD]:
        """The attacks in the order they run (shared scope: APGD-T for SHARED_TARGETS targets at most)."""
        common: dict[str, Any] = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "memory_budget_mb": self.memory_budget_mb,
        }
        out = [APGD(loss=Loss.CE, restarts=self.restarts, seed=self.seed, **common)]
        targets = min(self.targets, classes - 1, self.SHARED_TARGETS if shared else self.targets)
        for k in range(1, targets + 1):
            out.append(APGD(loss=targeted_dlr(k), seed=self.seed + k, **common))
        return out

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
    ) -> AttackResult:
        """Attack as `PGD.__call__` does (same arguments); the result's `attack` is this ensemble's repr."""
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"need as many labels as inputs and at least one (got {x.shape[0]} and {y.shape[0]})")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                classes = model(x[:1]).shape[1]
            parts = self.parts(classes, shared=threat.scope is Scope.SHARED)
            if threat.scope is Scope.SHARED:
                result = self._shared(model, x, y, threat, parts, progress, first_index, sync_ranks)
            else:
                result = self._per_example(model, x, y, threat, parts, progress, first_index)
        finally:
            model.train(was_training)
        return dataclasses.replace(result, attack=repr(self))

    @staticmethod
    def _ticker(progress: Progress | None, parts: int, index: int) -> Progress | None:
        """Progress over all parts: each part's share of the bar is equal (later parts may attack fewer)."""
        if progress is None:
            return None
        return lambda done, total: progress(index * total + done, parts * total)

    def _per_example(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        parts: list[APGD],
        progress: Progress | None,
        first_index: int,
    ) -> AttackResult:
        result: AttackResult = parts[0](
            model, x, y, threat, self._ticker(progress, len(parts), 0), first_index=first_index
        )
        standing = ~_verified_errors(model, x, y, result)
        for i, attack in enumerate(parts[1:], start=1):
            rows = torch.nonzero(standing).flatten()
            if len(rows) == 0:
                break
            idx = rows.to(x.device)
            # Random starts keyed by global example index: a sharded run draws what one process draws.
            tick = self._ticker(progress, len(parts), i)
            found = attack(model, x[idx], y[idx], threat, tick, example_ids=first_index + rows)
            broken = _verified_errors(model, x[idx], y[idx], found)
            if bool(broken.any()):
                result = result.merge_rows(found, rows, broken)
                standing[rows[broken]] = False
        return result

    def _shared(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        parts: list[APGD],
        progress: Progress | None,
        first_index: int,
        sync_ranks: bool,
    ) -> AttackResult:
        best: AttackResult | None = None
        best_correct = math.inf
        for i, attack in enumerate(parts):
            tick = self._ticker(progress, len(parts), i)
            result = attack(model, x, y, threat, tick, first_index=first_index, sync_ranks=sync_ranks)
            check = verify(model, x, y, result)
            # Every rank must keep the same part: count failures and correct examples over all ranks.
            status = torch.tensor(
                [float(not check.passed), float(check.correct.sum())], dtype=torch.float64, device=y.device
            )
            if sync_ranks:
                dist.all_reduce_sum_([status])
            if status[0] > 0 and best is not None:
                continue
            if best is None or float(status[1]) < best_correct:
                best, best_correct = result, float(status[1]) if status[0] == 0 else math.inf
        assert best is not None
        return best


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


def _verified_errors(model: nn.Module, x: Tensor, y: Tensor, result: AttackResult) -> Tensor:
    """(N,) bool on the CPU: examples the attack's own logits misclassify and the verifier confirms (inside the
    threat set, misclassified by the ordinary module). Only those rows are verified: the cheap way to keep
    nothing unverified (a whole per-example verification materialises every example's weights)."""
    claimed = (result.logits.argmax(1) != y).cpu()
    rows = torch.nonzero(claimed).flatten()
    confirmed = torch.zeros(len(y), dtype=torch.bool)
    if len(rows):
        idx = rows.to(x.device)
        check = verify(model, x[idx], y[idx], result.subset(rows))
        if check.passed:
            confirmed[rows] = ~check.correct.cpu()
    return confirmed
