"""Joint properties: every input of the box AND every weight of the ball (THEORY.md sections 2 and 12).

- `joint_witness`: a joint counterexample is the attack's point with its explicit perturbed weights W'; it is
  claimed only after the project's independent checker (`nonsingular.check_attack`) finds the weights inside the ball
  and recomputes the same outputs, and the ordinary module, run in float32 with W' by `functional_call`, maps
  the snapped input into the unsafe region.
- `max_eps_w`: the largest weight radius at which a predicate (the bounds, or the bounds then branch and bound:
  radius.py) still proves the property, by bisection on eps_w (the bracket [proven, not proven] is the honest
  statement).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from ..check import check_attack
from ..properties import Case
from ..threat import ThreatModel
from .falsify import FalsifyRound
from .result import Counterexample
from .witness import snap_into_box

__all__ = ["RadiusBracket", "joint_witness", "max_eps_w"]


def joint_witness(
    model: nn.Module,
    found: FalsifyRound,
    case: Case,
    case_index: int,
    input_shape: tuple[int, ...],
    threat: ThreatModel,
    k: int,
) -> Counterexample | None:
    """The first of the round's `k` best rows whose (x, W') passes every check; None if none does."""
    s0 = torch.full_like(found.result.x_adv, 0.5)
    labels = torch.arange(len(case.unsafe)).repeat_interleave(len(s0) // len(case.unsafe))
    checked = check_attack(found.objective, s0, labels, found.result)
    if not checked.passed:
        raise RuntimeError(f"the joint attack left its threat set: {'; '.join(checked.problems)}")
    params = {name: p.detach() for name, p in model.named_parameters()}
    for rank in range(min(k, len(found.x))):
        row = int(found.order[rank])
        perturbed = {n.removeprefix("net."): w[0] for n, w in found.result.perturbed_weights(row, row + 1).items()}
        x = snap_into_box(found.x[rank : rank + 1], case.lower, case.upper)
        weights = {**params, **{n: w.to(params[n].dtype) for n, w in perturbed.items()}}
        with torch.no_grad():
            y = functional_call(model, weights, (x.to(torch.float32).reshape(1, *input_shape),))
        y = y.reshape(1, -1).to(torch.float64)
        for j, conj in enumerate(case.unsafe):
            if bool(torch.isfinite(y).all()) and float(conj.violation(y)[0]) <= 0:
                return Counterexample(x[0], y[0], case_index, j, "torch-float32+checker", perturbed)
    return None


@dataclass
class RadiusBracket:
    """The largest proven weight radius: `proven` is proven (0 when nothing is), `refuted_or_open` is not (inf
    when the search never found an unproven radius below its cap)."""

    proven: float
    refuted_or_open: float
    steps: int


def max_eps_w(
    proves: Callable[[float], bool],
    *,
    start: float = 1e-3,
    cap: float = 1.0,
    rel_tol: float = 0.05,
    deadline: float = math.inf,
    on_step: Callable[[RadiusBracket], None] | None = None,
    proven: float = 0.0,
) -> RadiusBracket:
    """Bisection on eps_w for the predicate `proves(eps_w)` (monotone: a smaller ball is a subset).

    Doubles from `start` until the bound fails or `cap`, then halves the bracket until its ends are within
    `rel_tol` of each other or time.monotonic() passes `deadline`. `on_step` sees the bracket after every
    evaluation (so a caller that may be stopped keeps the latest one). `proven`: a radius already known to be
    proven (by a weaker predicate that implies this one), the bracket's lower end from the start.
    """
    lo, hi, steps = proven, math.inf, 0

    def check(eps: float) -> bool:  # the predicate, reporting the bracket it implies
        ok = proves(eps)
        if on_step is not None:
            on_step(RadiusBracket(max(lo, eps) if ok else lo, hi if ok else min(hi, eps), steps))
        return ok

    eps = start
    while eps <= cap and time.monotonic() < deadline:
        steps += 1
        if check(eps):
            lo, eps = eps, eps * 2
        else:
            hi = eps
            break
    if hi == math.inf:
        return RadiusBracket(lo, hi, steps)
    if lo == 0.0:  # even the first radius fails: halve down towards 0
        eps = hi / 2
        while eps > start * 1e-4 and time.monotonic() < deadline:
            steps += 1
            if check(eps):
                lo = eps
                break
            hi, eps = eps, eps / 2
    while hi < math.inf and lo > 0 and (hi - lo) > rel_tol * hi and time.monotonic() < deadline:
        mid = math.sqrt(lo * hi)
        steps += 1
        if check(mid):
            lo = mid
        else:
            hi = mid
    return RadiusBracket(lo, hi, steps)
