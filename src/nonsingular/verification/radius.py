"""The joint column: after an `unsat`, the largest weight radius eps_w still proven, by the bounds alone and with
branch and bound (THEORY.md section 12).

`joint_radius` bisects twice on its own wall-clock budget:

1. the bounds (`prove_pieces`: IBP, CROWN, alpha-CROWN) as the predicate: the bracket [proven, open] is the
   bounds' radius (stats `eps_w_proven_bounds` / `eps_w_open_bounds`; [0, 0] when they do not prove the property
   even with exact weights, tested first);
2. the bounds, then joint branch and bound on the pieces they leave open (`complete_pieces`, each step with its
   own share of the budget), starting from the bounds' proven radius and testing their open end first: when the
   search proves it, the bracket grows upward (doubling, up to the cap) and is bisected again (stats
   `eps_w_proven` / `eps_w_open`). Its predicate runs the bounds first, so every radius the bounds prove it
   proves too, and it starts from theirs: its proven radius is never below the bounds' one.

A step whose search runs out of its time counts as not proven (`eps_w_bab_timeouts`). A search that finds a
joint counterexample, re-checked on the module with its explicit weights, refutes that radius and every larger
one (the balls are nested): the bracket's upper end is then a radius with a counterexample (`eps_w_refuted`).
The joint search runs in exact arithmetic, as branch and bound does for joint properties in `verify`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from torch import nn

from ..bounds import BoundMethod
from ..properties import Property
from ..threat import ThreatModel
from .bounding import prove_pieces
from .complete_phase import complete_pieces
from .joint import RadiusBracket, max_eps_w
from .result import Counterexample
from .witness import torch_executor

__all__ = ["JointRadius", "RadiusMethod", "joint_radius"]

#: First radius the bisection tries, and the largest (relative radii beyond 1 let a weight change sign).
START, CAP = 1e-3, 1.0
#: Steps of branch and bound the stage-2 budget is shared among: the bounds' bracket tested, one doubling, and
#: the four halvings that bring a factor-2 bracket within 5%.
BAB_STEPS = 6


class RadiusMethod(str, Enum):
    """The predicate of the bisection: the bounds alone, or the bounds then branch and bound."""

    BOUNDS = "bounds"
    BAB = "bab"


@dataclass
class JointRadius:
    """Both brackets of the joint column.

    Attributes:
        bounds: the bisection with the bounds alone (stage 1).
        bab: the bisection with branch and bound (stage 2); None with RadiusMethod.BOUNDS.
        refuted: the smallest radius at which the search found a checked counterexample (inf: none found).
        witness: that counterexample (input and perturbed weights).
        seconds_bounds, seconds_bab: wall-clock time of each stage.
        bab_timeouts: stage-2 steps whose search ran out of time (their radius counted as not proven).
    """

    bounds: RadiusBracket
    bab: RadiusBracket | None = None
    refuted: float = math.inf
    witness: Counterexample | None = None
    seconds_bounds: float = 0.0
    seconds_bab: float = 0.0
    bab_timeouts: int = 0

    @property
    def final(self) -> RadiusBracket:
        """The bracket the column reports: branch and bound's when it ran, else the bounds'."""
        return self.bab if self.bab is not None else self.bounds

    def stats(self) -> dict[str, float]:
        """The result's stats: `eps_w_proven` / `eps_w_open` (the final bracket) and the per-stage figures."""
        out = {
            "eps_w_proven": self.final.proven,
            "eps_w_open": self.final.refuted_or_open,
            "eps_w_proven_bounds": self.bounds.proven,
            "eps_w_open_bounds": self.bounds.refuted_or_open,
            "eps_w_seconds_bounds": self.seconds_bounds,
        }
        if self.bab is not None:
            out.update(eps_w_seconds_bab=self.seconds_bab, eps_w_bab_timeouts=float(self.bab_timeouts))
        if self.refuted < math.inf:
            out["eps_w_refuted"] = self.refuted
        return out


def joint_radius(
    model: nn.Module,
    prop: Property,
    shape: tuple[int, ...],
    threat_at: Callable[[float], ThreatModel | None],
    methods: Sequence[BoundMethod],
    *,
    budget: float,
    method: RadiusMethod = RadiusMethod.BAB,
    seed: int = 0,
    rel_tol: float = 0.05,
    on_step: Callable[[JointRadius], None] | None = None,
) -> JointRadius:
    """The largest proven eps_w of a property already proven at eps_w = 0 (see the module docstring).

    Args:
        threat_at: the weight ball at a radius (in the caller's units: absolute or relative).
        methods: the bound methods of both stages.
        budget: wall-clock seconds for both stages together; with branch and bound, the bounds' stage may use
            half of it and the search the rest.
        on_step: sees the brackets after every step (a caller that may be stopped keeps the latest).
    """
    t0 = time.monotonic()
    deadline = t0 + budget
    pieces = set(prop.pieces())
    state = JointRadius(RadiusBracket(0.0, math.inf, 0))

    def report() -> None:
        if on_step is not None:
            on_step(state)

    def bounds_prove(eps: float) -> bool:
        return not prove_pieces(model, prop, shape, threat_at(eps), methods, pieces, deadline).open_pieces

    def stage1_step(bracket: RadiusBracket) -> None:
        state.bounds, state.seconds_bounds = bracket, time.monotonic() - t0
        report()

    stage1_deadline = t0 + budget / 2 if method is RadiusMethod.BAB else deadline
    if bounds_prove(0.0):
        state.bounds = max_eps_w(
            bounds_prove, start=START, cap=CAP, rel_tol=rel_tol, deadline=stage1_deadline, on_step=stage1_step
        )
    else:
        # The bounds leave the property open with exact weights (its answer needed branch and bound): no ball
        # is proven by them (the balls are nested), so stage 1 stops here rather than halving its first radius
        # towards 0 (14 bound calls: 7-12 s per such mnistfc instance). The bracket says "open at 0".
        stage1_step(RadiusBracket(0.0, 0.0, 1))
    state.seconds_bounds = time.monotonic() - t0
    if method is RadiusMethod.BOUNDS:
        report()
        return state

    t1 = time.monotonic()
    step_seconds = max(0.0, deadline - t1) / BAB_STEPS
    run = torch_executor(model)  # unused by joint searches (their witnesses are checked with explicit weights)

    def bab_proves(eps: float) -> bool:
        step_deadline = min(deadline, time.monotonic() + step_seconds)
        threat = threat_at(eps)
        bounded = prove_pieces(model, prop, shape, threat, methods, pieces, step_deadline)
        if not bounded.open_pieces:
            return True
        if bounded.out_of_time:
            state.bab_timeouts += 1
            return False
        searched = complete_pieces(
            model, prop, shape, threat, bounded.open_pieces, step_deadline, run, "torch-float32", seed
        )
        if searched.counterexample is not None and eps < state.refuted:
            state.refuted, state.witness = eps, searched.counterexample
        elif searched.out_of_time:
            state.bab_timeouts += 1
        return not searched.open_pieces and searched.counterexample is None

    def stage2_step(bracket: RadiusBracket) -> None:
        state.bab, state.seconds_bab = bracket, time.monotonic() - t1
        report()

    known = state.bounds
    # The search starts where the bounds stopped: at their first unproven radius, or at the cap when they prove
    # everything below it; with nothing proven by the bounds, from the usual first radius.
    if known.refuted_or_open == math.inf:
        first = CAP
    elif known.proven > 0:
        first = known.refuted_or_open
    else:
        first = START
    state.bab = known
    if known.proven < CAP:
        state.bab = max_eps_w(
            bab_proves,
            start=first,
            cap=CAP,
            rel_tol=rel_tol,
            deadline=deadline,
            on_step=stage2_step,
            proven=known.proven,
        )
    state.seconds_bab = time.monotonic() - t1
    report()
    return state
