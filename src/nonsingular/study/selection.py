"""Choosing among regularized variants on the validation split, never on the test set.

A careful reproduction tunes the regularizer before judging it. Each model whose objective includes bound-reg
and whose training measured the per-example joint robust accuracy on the validation split (training options
`eval_steps` > 0, `eval_eps_x`, `eval_eps_w`: the trainer holds out `val_fraction` of the training set, seeded
by the data seed) is a candidate; the candidate with the highest mean validation joint robust accuracy over
seeds (ties: the higher mean validation clean accuracy) is the selected variant, and claim 2 rests on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .records import StudyResults
from .stats import runs
from .verdicts import mean_sd

__all__ = ["Candidate", "validation_candidates", "validation_choice"]


@dataclass
class Candidate:
    """One regularized variant's validation numbers (fractions; per seed and mean)."""

    model: str
    objective: str
    robust: dict[Any, float]
    clean: dict[Any, float]

    @property
    def mean_robust(self) -> float:
        return mean_sd(list(self.robust.values()))[0]

    @property
    def mean_clean(self) -> float:
        return mean_sd(list(self.clean.values()))[0]

    def row(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "objective": self.objective,
            "val_joint_robust": self.mean_robust,
            "val_clean": self.mean_clean,
            "seeds": len(self.robust),
            **{f"val_joint_robust seed {s}": v for s, v in self.robust.items()},
        }


def validation_candidates(results: StudyResults) -> list[Candidate]:
    """The regularized models with a validation joint robust accuracy in every seed, in study order."""
    out = []
    for name, model in results.models.items():
        if "bound-reg" not in model.objective.split("+"):
            continue
        robust: dict[Any, float] = {}
        clean: dict[Any, float] = {}
        for run in runs(model):
            v = run.validation or {}
            if v.get("val_robust_acc") is None:
                break
            robust[run.seed], clean[run.seed] = v["val_robust_acc"], v.get("val_clean_acc", 0.0)
        else:
            if robust:
                out.append(Candidate(name, model.objective, robust, clean))
    return out


def validation_choice(results: StudyResults) -> Candidate | None:
    """The selected variant (highest mean validation joint robust accuracy, then clean); None with fewer than
    two candidates (nothing to choose)."""
    candidates = validation_candidates(results)
    if len(candidates) < 2:
        return None
    return max(candidates, key=lambda c: (c.mean_robust, c.mean_clean))
