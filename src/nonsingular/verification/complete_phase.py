"""The complete phase of verification: branch and bound (`nonsingular.complete`) on the pieces the bounds left
open, one call per case with the open conjunctions as its disjunct groups.

What it proves and finds is re-checked the same way as the rest: a `sat` only after the reference runtime (or,
for joint threats, the ordinary module with the explicit weights) maps the snapped witness into the unsafe
region. For input-only properties its `unsat` covers float32 execution (THEORY.md section 13) the way the bounds
phase does: the rounding of every layer is a bias perturbation, so the search runs with a bias radius eps_b no
smaller than any layer's rounding radius (from CROWN boxes of the executed network, `GraphBounds(roundoff=...)`)
on the box widened by the rounding of reading it; its witnesses are then re-checked on the real model without
those bias moves. Joint properties (a weight ball of their own, possibly relative) are searched in exact
arithmetic, and graphs the rounding analysis does not cover likewise (stats `rounding_unbounded`). A model
outside branch and bound's chains (UnsupportedLayerError) leaves the pieces open.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from ..bounds import UnsupportedLayerError
from ..bounds.engine import GraphBounds
from ..bounds.graph import trace
from ..bounds.rounding_bias import FLOAT32_UNIT_ROUNDOFF, read_rounding
from ..complete import BaBStatus, branch_and_bound
from ..properties import Property
from ..threat import ThreatModel
from .result import Counterexample
from .witness import Executor, snap_into_box, try_witness

__all__ = ["CompleteOutcome", "complete_pieces"]

log = logging.getLogger(__name__)


@dataclass
class CompleteOutcome:
    """open_pieces: still undecided; counterexample: a re-checked one (then the property is sat); out_of_time:
    a search ran into the deadline."""

    open_pieces: set[tuple[int, int]]
    counterexample: Counterexample | None = None
    out_of_time: bool = False
    stats: dict[str, float] = field(default_factory=dict)


def _joint_check(
    model: nn.Module, x: torch.Tensor, weights: dict[str, torch.Tensor], prop: Property, i: int, shape: tuple[int, ...]
) -> Counterexample | None:
    case = prop.cases[i]
    params = {n: p.detach() for n, p in model.named_parameters()}
    moved = {n: w.to(params[n].dtype) for n, w in weights.items()}
    with torch.no_grad():
        y = functional_call(model, {**params, **moved}, (x.to(torch.float32).reshape(1, *shape),))
    y = y.reshape(1, -1).to(torch.float64)
    for j, conj in enumerate(case.unsafe):
        if bool(torch.isfinite(y).all()) and float(conj.violation(y)[0]) <= 0:
            return Counterexample(x[0], y[0], i, j, "torch-float32 (bab weights)", moved)
    return None


def _rounding_radius(model: nn.Module, lower: torch.Tensor, upper: torch.Tensor) -> float | None:
    """The largest float32 rounding radius of any layer's pre-activations over the box, None where the rounding
    analysis does not cover the graph."""
    with torch.no_grad():
        graph, _ = trace(model, (lower + upper) / 2)
        try:
            bounds = GraphBounds(graph, {}, lower, upper, crown=True, roundoff=FLOAT32_UNIT_ROUNDOFF)
        except UnsupportedLayerError as err:
            log.warning("branch and bound in exact arithmetic only: %s", err)
            return None
    radii = [float(t.beta.max()) for t in bounds.threats.values() if t.beta is not None]
    return max(radii) if radii else None


def complete_pieces(
    model: nn.Module,
    prop: Property,
    shape: tuple[int, ...],
    threat: ThreatModel | None,
    pieces: set[tuple[int, int]],
    deadline: float,
    run: Executor,
    checked_by: str,
    seed: int,
) -> CompleteOutcome:
    """Run branch and bound on each case with open pieces, within the deadline."""
    open_pieces = set(pieces)
    stats: dict[str, float] = {}
    joint = threat is not None and threat.perturbs_weights
    for i in sorted({c for c, _ in pieces}):
        left = deadline - time.monotonic()
        if left <= 0:
            return CompleteOutcome(open_pieces, None, True, stats)
        case = prop.cases[i]
        js = sorted(j for c, j in open_pieces if c == i)
        C = torch.cat([case.unsafe[j].C for j in js])
        d = torch.cat([case.unsafe[j].d for j in js])
        groups = torch.cat([torch.full((case.unsafe[j].C.shape[0],), k) for k, j in enumerate(js)])
        lower, upper = case.lower.reshape(1, *shape), case.upper.reshape(1, *shape)
        search_threat = threat
        if not joint:
            rounding = _rounding_radius(model, lower, upper)
            if rounding is None:
                stats["rounding_unbounded"] = 1
            else:
                search_threat = ThreatModel(eps_b=rounding)
                lower, upper = read_rounding(lower, upper, FLOAT32_UNIT_ROUNDOFF)
                stats["bab_rounding_eps_b"] = rounding
        # A witness the rounding radius made possible may not be one of the real network: then search again
        # in exact arithmetic for a real one (whose `unsat` alone would not cover float32 execution).
        searches = [search_threat] if search_threat is threat else [search_threat, threat]
        for attempt, search in enumerate(searches):
            if deadline - time.monotonic() <= 0:
                return CompleteOutcome(open_pieces, None, True, stats)
            box = (lower, upper) if attempt == 0 else (case.lower.reshape(1, *shape), case.upper.reshape(1, *shape))
            try:
                result = branch_and_bound(
                    model,
                    box[0][0],
                    box[1][0],
                    C,
                    d,
                    groups=groups,
                    threat=search,
                    timeout=max(0.01, deadline - time.monotonic()),
                    seed=seed,
                )
            except UnsupportedLayerError as err:
                log.info("branch and bound does not cover this model: %s", err)
                stats["bab_unsupported"] = 1
                return CompleteOutcome(open_pieces, None, False, stats)
            stats["bab_domains"] = stats.get("bab_domains", 0) + result.stats.domains_visited
            stats["bab_seconds"] = stats.get("bab_seconds", 0) + result.stats.time_total
            if result.status is BaBStatus.UNSAT:
                if attempt == 0:
                    open_pieces -= {(i, j) for j in js}
                else:
                    stats["bab_unsat_exact_arithmetic_only"] = 1
                break
            if result.status is BaBStatus.TIMEOUT:
                return CompleteOutcome(open_pieces, None, True, stats)
            if result.status is not BaBStatus.SAT or result.witness is None:
                break
            x = snap_into_box(result.witness.x.reshape(1, -1), case.lower, case.upper)
            if joint:
                cex = _joint_check(model, x, result.witness.weights, prop, i, shape)
            else:
                cex = try_witness(x, case, i, run, shape, checked_by)
            if cex is not None:
                return CompleteOutcome(open_pieces, cex, False, stats)
            stats["bab_witness_rejected"] = stats.get("bab_witness_rejected", 0) + 1
    return CompleteOutcome(open_pieces, None, False, stats)
