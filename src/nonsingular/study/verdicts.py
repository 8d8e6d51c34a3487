"""The paper's two claims judged from a study's results by one stated rule on per-seed differences.

Claim 1: input-adversarial training leaves a model as or more fragile to weight perturbations than standard
training. Claim 2: the bound-regularized model is more robust to joint perturbations than the standard model
(judged separately against the singular defences, input-AT and weight-AT).

The rule, per claim, per pair of models (every model of the objective against every reference) and per scope:

1. Cells: claim 1 uses the weight-only cells (eps_x = 0, eps_w > 0), claim 2 the joint cells (both > 0). A cell
   where both models' mean accuracies are below `FLOOR` (saturated: the attack wins everywhere) is excluded,
   and so is a cell without a checked accuracy for every seed.
2. Per seed, the difference is the mean over the kept cells of (subject - reference) accuracy, paired by seed.
3. The difference is decided when it has the same sign in every seed and its mean exceeds `Z` standard errors
   (standard deviation over seeds / sqrt(seeds)); otherwise it is within the noise. One seed has no spread and
   is never decided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ..formatting import points
from .records import ModelResult, StudyResults

__all__ = ["FLOOR", "Comparison", "Z", "claim_comparisons", "mean_sd", "model_comparisons"]

#: Cells where both models are below this accuracy are excluded (the attack saturates there).
FLOOR = 0.05
#: A difference is decided when its mean exceeds this many standard errors (and keeps its sign in every seed).
Z = 2.0

SINGULAR = ("pgd-at", "awp")


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation); the deviation is None for one value."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def seed_values(model: ModelResult, eps_x: float, eps_w: float, scope: str) -> dict[Any, float | None]:
    """seed -> checked accuracy of the model's cell (None when it failed the check)."""
    return {
        c.get("seed"): c["accuracy"]
        for c in model.cells
        if c["eps_x"] == eps_x and c["eps_w"] == eps_w and c["scope"] == scope
    }


@dataclass
class Comparison:
    """One judged pair: subject against reference in one scope, with the numbers behind the verdict.

    Attributes:
        claim: 1 or 2.
        subject, reference: model names (claim 1: input-AT vs standard; claim 2: bound-reg vs the reference).
        scope: "per-example" or "shared".
        cells: the (eps_x, eps_w) cells kept.
        excluded: cells left out (both below FLOOR, or an unchecked cell).
        per_seed: seed -> mean over kept cells of (subject - reference) accuracy, fraction.
        mean, se: mean and standard error of per_seed (se None with one seed).
        outcome: "higher", "lower" (subject's accuracy, decided) or "within noise" / "no cells".
        parametrization: the weight parametrization of the cells ("ball mode"; "" when the results name none).
    """

    claim: int
    subject: str
    reference: str
    scope: str
    cells: list[tuple[float, float]]
    excluded: int
    per_seed: dict[Any, float]
    mean: float | None
    se: float | None
    outcome: str
    parametrization: str = ""

    def row(self) -> dict[str, Any]:
        """The comparison as one table row (CSV / JSON): its verdict and the numbers behind it, as fractions."""
        return {
            "parametrization": self.parametrization,
            "claim": self.claim,
            "subject": self.subject,
            "reference": self.reference,
            "scope": self.scope,
            "verdict": self.verdict,
            "mean_difference": self.mean,
            "standard_error": self.se,
            "seeds": len(self.per_seed),
            "cells": len(self.cells),
            "excluded": self.excluded,
        }

    @property
    def seeds_agreeing(self) -> int:
        """Seeds whose difference has the sign of the mean (the rule decides only when that is every seed)."""
        if self.mean is None or self.mean == 0:
            return 0
        return sum(1 for d in self.per_seed.values() if (d > 0) == (self.mean > 0) and d != 0)

    def mean_se_text(self) -> str:
        """The mean difference and its standard error in points, "+1.23 ± 0.45" ("+1.23 ± n/a" with one seed)."""
        if self.mean is None:
            return "-"
        return f"{points(self.mean)} ± {'n/a' if self.se is None else points(self.se, '.2f')}"

    @property
    def verdict(self) -> str:
        """What the outcome means for the claim."""
        if self.outcome in ("no cells", "one seed"):
            return "undecided"
        if self.claim == 1:  # subject lower under weight attacks = more fragile = the claim
            return {"lower": "holds", "higher": "does not hold"}.get(self.outcome, "not refuted (within noise)")
        return {"higher": "holds", "lower": "does not hold"}.get(self.outcome, "undecided (within noise)")

    def sentence(self) -> str:
        what = "weight-only" if self.claim == 1 else "joint"
        where = f"{self.parametrization}, {self.scope}" if self.parametrization else self.scope
        if not self.cells:
            return (
                f"Claim {self.claim} ({where}), {self.subject} vs {self.reference}: undecided, no {what} cell "
                f"above the {100 * FLOOR:.0f}% floor ({self.excluded} excluded)."
            )
        seeds = ", ".join(f"seed {s}: {points(d, '+.1f')}" for s, d in self.per_seed.items())
        se = "n/a (one seed)" if self.se is None else points(self.se, ".2f")
        cells = ", ".join(f"{ew:g}" if self.claim == 1 else f"({ex:g}, {ew:g})" for ex, ew in self.cells)
        return (
            f"Claim {self.claim} ({where}), {self.subject} vs {self.reference}: {self.verdict}. "
            f"{what} accuracy difference {self.subject} - {self.reference} (points, mean over "
            f"{'eps_w' if self.claim == 1 else '(eps_x, eps_w)'} in {cells}; {self.excluded} cell(s) excluded): "
            f"{seeds}; mean {points(self.mean)}, standard error {se}; decided when every seed has the same sign "
            f"and |mean| > {Z:g} SE."
        )


Named = tuple[str, ModelResult]


def _compare(claim: int, subject: Named, reference: Named, grid: dict[str, Any], scope: str) -> Comparison:
    (sname, smodel), (rname, rmodel) = subject, reference
    if claim == 1:
        points = [(0.0, ew) for ew in grid["eps_w"] if ew > 0]
    else:
        points = [(ex, ew) for ex in grid["eps_x"] for ew in grid["eps_w"] if ex > 0 and ew > 0]
    kept: list[tuple[float, float]] = []
    excluded, diffs = 0, dict[Any, list[float]]()
    for ex, ew in points:
        s, r = seed_values(smodel, ex, ew, scope), seed_values(rmodel, ex, ew, scope)
        pairs = {k: (s[k], r[k]) for k in s if k in r}
        both = {k: (a, b) for k, (a, b) in pairs.items() if a is not None and b is not None}
        if not pairs or len(both) < len(pairs):
            excluded += 1
            continue
        if max(mean_sd([a for a, _ in both.values()])[0], mean_sd([b for _, b in both.values()])[0]) < FLOOR:
            excluded += 1
            continue
        kept.append((ex, ew))
        for k, (a, b) in both.items():
            diffs.setdefault(k, []).append(a - b)
    per_seed = {k: sum(v) / len(v) for k, v in diffs.items() if len(v) == len(kept)}
    if not kept or not per_seed:
        return Comparison(claim, sname, rname, scope, [], excluded, {}, None, None, "no cells")
    mean, sd = mean_sd(list(per_seed.values()))
    se = None if sd is None else sd / math.sqrt(len(per_seed))
    if se is None:
        outcome = "one seed"
    elif all(d > 0 for d in per_seed.values()) and mean > Z * se:
        outcome = "higher"
    elif all(d < 0 for d in per_seed.values()) and -mean > Z * se:
        outcome = "lower"
    else:
        outcome = "within noise"
    return Comparison(claim, sname, rname, scope, kept, excluded, per_seed, mean, se, outcome)


def parametrization_views(results: StudyResults) -> list[tuple[str, StudyResults]]:
    """("ball mode", results restricted to that parametrization) for the main grid, then for each of the grid's
    `parametrizations` (their cells are each model's `extra_cells[label]`, on eps_x in {0, headline eps_x}).
    Results without parametrizations give one view, the results themselves (label "" when the grid names no
    ball)."""
    grid = results.grid
    main = f"{grid['weight_ball']} {grid['weight_mode']}" if "weight_ball" in grid else ""
    views = [(main, results)]
    for p in grid.get("parametrizations") or []:
        label = f"{p['weight_ball']} {p['weight_mode']}"
        xs = sorted({0.0, results.headline["eps_x"]})
        sub = {**grid, "eps_x": xs, "eps_w": p["eps_w"], "weight_ball": p["weight_ball"]}
        sub |= {"weight_mode": p["weight_mode"], "parametrizations": []}
        models = {
            name: replace(m, cells=m.extra_cells.get(label, []), certified=[]) for name, m in results.models.items()
        }
        views.append((label, replace(results, grid=sub, models=models)))
    return views


def claim_comparisons(results: StudyResults) -> list[Comparison]:
    """Every comparison the rule makes on `results`: claim 1 for each pgd-at model against each standard model,
    claim 2 for each model trained with bound-reg (alone or composed with another objective) against each
    standard model, then against each singular defence, and a composed one (e.g. joint-at+bound-reg) against
    the models of its base objective alone (joint-at); each in every scope of the grid, and in every weight
    parametrization of the grid (the main one first, see parametrization_views)."""
    out = []
    for label, view in parametrization_views(results):
        for c in model_comparisons(view.models, view.grid):
            c.parametrization = label
            out.append(c)
    return out


def model_comparisons(models: dict[str, ModelResult], grid: dict[str, Any]) -> list[Comparison]:
    """The comparisons of claim_comparisons on `models`' cells over `grid` (its eps_x, eps_w and scopes) alone,
    with no parametrization named: what the scale analysis judges on each parametrization's own cells."""
    by = {obj: [(n, m) for n, m in models.items() if m.objective == obj] for obj in ("standard", *SINGULAR)}
    # Every model that trains with the regularizer, alone or composed (e.g. "joint-at+bound-reg").
    regs = [(n, m) for n, m in models.items() if "bound-reg" in m.objective.split("+")]
    pairs = [(1, a, s) for a in by["pgd-at"] for s in by["standard"]]
    pairs += [(2, r, s) for r in regs for s in by["standard"]]
    pairs += [(2, r, d) for r in regs for obj in SINGULAR for d in by[obj]]
    # A regularizer composed with another objective (e.g. joint-at+bound-reg) against that objective alone: what
    # the regularizer itself adds (a gain over standard may be the base's).
    for r in regs:
        base = "+".join(p for p in r[1].objective.split("+") if p != "bound-reg")
        if base and base != "standard":
            pairs += [(2, r, (n, m)) for n, m in models.items() if m.objective == base and base not in SINGULAR]
    return [_compare(claim, a, b, grid, scope) for claim, a, b in pairs for scope in grid["scopes"]]
