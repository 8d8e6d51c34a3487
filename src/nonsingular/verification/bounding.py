"""The bounding phase of verification: prove (box, conjunction) pieces empty with IBP, CROWN, alpha-CROWN.

A piece is empty when some row r of its conjunction has a lower bound of C_r f(x) - d_r above zero over the box
and the weight ball (THEORY.md section 12 with lam = e_r), for the model as executed in float32 (section 13,
`spec_bounds(executed_roundoff=...)`); where the rounding analysis cannot follow the graph the bound holds in
exact arithmetic only, and the stats say so (`rounding_unbounded`). The clock is read between bound calls, and a
call is skipped when the slowest one of its method so far would not fit in the time left.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..bounds import BoundMethod, UnsupportedLayerError
from ..bounds.rounding_bias import FLOAT32_UNIT_ROUNDOFF
from ..bounds.spec import spec_bounds
from ..properties import Property
from ..threat import ThreatModel

__all__ = ["BoundingOutcome", "prove_pieces"]

log = logging.getLogger(__name__)


@dataclass
class BoundingOutcome:
    """open_pieces: the (case, conjunction) pieces not proven; decided_by: the method that closed the last one
    (None when some stay open); out_of_time: the deadline stopped the phase."""

    open_pieces: set[tuple[int, int]]
    decided_by: str | None
    out_of_time: bool
    stats: dict[str, float] = field(default_factory=dict)


def _bound(
    model: nn.Module,
    box: tuple[Tensor, Tensor],
    C: Tensor,
    d: Tensor,
    threat: ThreatModel | None,
    method: BoundMethod,
    alpha_steps: int,
    stats: dict[str, float],
) -> Tensor:
    with torch.no_grad():
        if not stats.get("rounding_unbounded"):
            try:
                return spec_bounds(
                    model, *box, C, d, threat, method, alpha_steps=alpha_steps, executed_roundoff=FLOAT32_UNIT_ROUNDOFF
                )[0]
            except UnsupportedLayerError as err:
                if "rounding" not in str(err):
                    raise
                log.warning("bounds hold in exact arithmetic only: %s", err)
                stats["rounding_unbounded"] = 1
        return spec_bounds(model, *box, C, d, threat, method, alpha_steps=alpha_steps)[0]


def prove_pieces(
    model: nn.Module,
    prop: Property,
    input_shape: tuple[int, ...],
    threat: ThreatModel | None,
    methods: Sequence[BoundMethod],
    pieces: set[tuple[int, int]],
    deadline: float,
    alpha_steps: int = 20,
) -> BoundingOutcome:
    """Try each method in turn on the pieces still open (all of a case's open rows in one call)."""
    open_pieces = set(pieces)
    stats: dict[str, float] = {}
    cost: dict[BoundMethod, float] = {}
    for method in methods:
        for i in sorted({c for c, _ in open_pieces}):
            case = prop.cases[i]
            js = sorted(j for c, j in open_pieces if c == i)
            estimate = cost.get(method, 0.0)
            if method is BoundMethod.ALPHA_CROWN and method not in cost:
                # alpha-CROWN re-runs CROWN's passes at each of its steps: about (steps + 1) CROWN calls.
                estimate = cost.get(BoundMethod.CROWN, 0.0) * (alpha_steps + 1) / 2
            if deadline - time.monotonic() <= estimate:
                return BoundingOutcome(open_pieces, None, True, stats)
            t0 = time.monotonic()
            C = torch.cat([case.unsafe[j].C for j in js])
            d = torch.cat([case.unsafe[j].d for j in js])
            box = (case.lower.reshape(1, *input_shape), case.upper.reshape(1, *input_shape))
            lower = _bound(model, box, C, d, threat, method, alpha_steps, stats)
            cost[method] = max(cost.get(method, 0.0), time.monotonic() - t0)
            stats[f"{method.value}_calls"] = stats.get(f"{method.value}_calls", 0) + 1
            offset = 0
            for j in js:
                rows = case.unsafe[j].C.shape[0]
                best = float(lower[offset : offset + rows].max()) if rows else -math.inf
                offset += rows
                stats[f"bound_case{i}_conj{j}"] = best
                if best > 0:
                    open_pieces.discard((i, j))
        if not open_pieces:
            return BoundingOutcome(open_pieces, method.value, False, stats)
        if time.monotonic() >= deadline:
            return BoundingOutcome(open_pieces, None, True, stats)
    return BoundingOutcome(open_pieces, None, False, stats)
