"""The default evaluation attack: APGD-CE, then APGD-T per target class, keeping each example's worst checked result.

Runs APGD-CE, then APGD-T (one run per target class) on the examples still standing, and keeps each example's
worst *checked* result (shared scope: the one run with the fewest checked-correct examples, since one
perturbation must serve every input). Every replacement is confirmed by the independent checker (`check`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..check import check_attack
from ..runtime import distributed as dist
from ..threat import Scope, ThreatModel
from .apgd import APGD
from .losses import Loss, targeted_dlr
from .protocol import Progress
from .result import AttackResult

__all__ = ["AutoEnsemble"]


@dataclass(frozen=True, kw_only=True)
class AutoEnsemble:
    """APGD-CE, then APGD-T (targeted DLR, one run per target class) on the examples still standing.

    Each example keeps its worst checked result: a later attack's point replaces an earlier one only where the
    checker confirms a misclassification inside the threat set. In shared scope every part attacks all
    examples (one perturbation must serve them all) and the part with the fewest checked-correct examples is
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
        standing = ~_checked_errors(model, x, y, result)
        for i, attack in enumerate(parts[1:], start=1):
            rows = torch.nonzero(standing).flatten()
            if len(rows) == 0:
                break
            idx = rows.to(x.device)
            # Random starts keyed by global example index: a sharded run draws what one process draws.
            tick = self._ticker(progress, len(parts), i)
            found = attack(model, x[idx], y[idx], threat, tick, example_ids=first_index + rows)
            broken = _checked_errors(model, x[idx], y[idx], found)
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
            check = check_attack(model, x, y, result)
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


def _checked_errors(model: nn.Module, x: Tensor, y: Tensor, result: AttackResult) -> Tensor:
    """(N,) bool on the CPU: examples the attack's own logits misclassify and the checker confirms (inside the
    threat set, misclassified by the ordinary module). Only those rows are checked: the cheap way to keep
    nothing unchecked (a whole per-example check materialises every example's weights)."""
    claimed = (result.logits.argmax(1) != y).cpu()
    rows = torch.nonzero(claimed).flatten()
    confirmed = torch.zeros(len(y), dtype=torch.bool)
    if len(rows):
        idx = rows.to(x.device)
        check = check_attack(model, x[idx], y[idx], result.subset(rows))
        if check.passed:
            confirmed[rows] = ~check.correct.cpu()
    return confirmed
