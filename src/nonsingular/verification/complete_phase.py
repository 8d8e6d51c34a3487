"""The complete phase of verification: branch and bound (`nonsingular.complete`) on the pieces the bounds left
open, one call per case with the open conjunctions as its disjunct groups.

What it proves and finds is re-checked the same way as the rest: a `sat` only after the reference runtime (or,
for joint threats, the ordinary module with the explicit weights) maps the snapped witness into the unsafe
region. Its `unsat` is branch and bound's: exact arithmetic over the box (the bounds phase also covers float32
execution, THEORY.md section 13; the result records which method decided). A model outside branch and bound's
chains (UnsupportedLayerError) leaves the pieces open.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from ..bounds import UnsupportedLayerError
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
    for i in sorted({c for c, _ in pieces}):
        left = deadline - time.monotonic()
        if left <= 0:
            return CompleteOutcome(open_pieces, None, True, stats)
        case = prop.cases[i]
        js = sorted(j for c, j in open_pieces if c == i)
        C = torch.cat([case.unsafe[j].C for j in js])
        d = torch.cat([case.unsafe[j].d for j in js])
        groups = torch.cat([torch.full((case.unsafe[j].C.shape[0],), k) for k, j in enumerate(js)])
        try:
            result = branch_and_bound(
                model,
                case.lower.reshape(shape),
                case.upper.reshape(shape),
                C,
                d,
                groups=groups,
                threat=threat,
                timeout=left,
                seed=seed,
            )
        except UnsupportedLayerError as err:
            log.info("branch and bound does not cover this model: %s", err)
            stats["bab_unsupported"] = 1
            return CompleteOutcome(open_pieces, None, False, stats)
        stats["bab_domains"] = stats.get("bab_domains", 0) + result.stats.domains_visited
        stats["bab_seconds"] = stats.get("bab_seconds", 0) + result.stats.time_total
        if result.status is BaBStatus.UNSAT:
            open_pieces -= {(i, j) for j in js}
        elif result.status is BaBStatus.SAT and result.witness is not None:
            x = snap_into_box(result.witness.x.reshape(1, -1), case.lower, case.upper)
            if result.witness.weights:
                cex = _joint_check(model, x, result.witness.weights, prop, i, shape)
            else:
                cex = try_witness(x, case, i, run, shape, checked_by)
            if cex is not None:
                return CompleteOutcome(open_pieces, cex, False, stats)
            stats["bab_witness_rejected"] = stats.get("bab_witness_rejected", 0) + 1
        elif result.status is BaBStatus.TIMEOUT:
            return CompleteOutcome(open_pieces, None, True, stats)
    return CompleteOutcome(open_pieces, None, False, stats)
