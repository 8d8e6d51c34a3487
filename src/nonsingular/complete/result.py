"""What a search returns, and the options that steer it (every default declared once, here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from .attack import Witness
from .branching import Branching

__all__ = ["BaBOptions", "BaBResult", "BaBStats", "BaBStatus", "Progress", "ProgressCallback"]


class BaBStatus(str, Enum):
    """unsat: proven, no point of the box is unsafe. sat: a checked counterexample. timeout: the time budget
    ran out. unknown: the search ended without an answer (memory budget, undecidable leaves, joint threats)."""

    UNSAT = "unsat"
    SAT = "sat"
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"


@dataclass
class BaBStats:
    """Counters and timings of one search (seconds are wall-clock).

    Attributes:
        domains_visited: domains bounded (the root included).
        domains_verified: domains closed by a positive bound (or an infeasible / positive leaf LP).
        max_depth: the most splits on one path.
        iterations: batches of domains bounded.
        leaves: fully split domains met (each settled by an LP on input-only threats).
        store_peak: the most open domains held at once.
        global_lower_bound: min over open domains of their lower bound of v (+inf when none is open; the root's
            bound if the search stopped at the root).
        root_lower_bound: the bound at the root (alpha-CROWN), before any split.
        time_bounding, time_branching, time_attack, time_total: seconds.
    """

    domains_visited: int = 0
    domains_verified: int = 0
    max_depth: int = 0
    iterations: int = 0
    leaves: int = 0
    store_peak: int = 0
    global_lower_bound: float = float("-inf")
    root_lower_bound: float = float("-inf")
    time_bounding: float = 0.0
    time_branching: float = 0.0
    time_attack: float = 0.0
    time_total: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BaBResult:
    """status, the counterexample when sat (None otherwise), statistics, and a one-line reason."""

    status: BaBStatus
    witness: Witness | None
    stats: BaBStats
    reason: str
    mode: str = "relu"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: status, reason, mode, statistics, and the counterexample as lists."""
        out: dict[str, Any] = {"status": self.status.value, "reason": self.reason, "mode": self.mode}
        out["stats"] = self.stats.to_dict()
        if self.witness is not None:
            out["counterexample"] = {
                "x": self.witness.x.flatten().tolist(),
                "value": self.witness.value,
                "value_float32": self.witness.value_float32,
                "weights": {k: v.tolist() for k, v in self.witness.weights.items()},
            }
        return out


@dataclass(frozen=True)
class Progress:
    """A snapshot for the progress line: domains done / open, the global lower bound, seconds left."""

    domains_visited: int
    domains_open: int
    global_lower_bound: float
    seconds_left: float

    def line(self) -> str:
        return (
            f"domains {self.domains_visited} done, {self.domains_open} open, lower bound "
            f"{self.global_lower_bound:.4g}, {self.seconds_left:.0f} s left"
        )


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class BaBOptions:
    """Knobs of the search beyond the main signature (defaults tuned on MNIST MLPs, see docs/complete.md).

    Attributes:
        branching: ReLU branching heuristic ("gap", "babsr", "widest").
        root_steps: alpha-CROWN gradient steps at the root.
        root_intermediate_steps: alpha-CROWN steps for each ReLU layer's intermediate bounds at the root, spent
            only when the plain root bound and the first attacks have failed (0: CROWN intermediate bounds).
        steps: alpha/beta gradient steps per batch of domains.
        lr_alpha, lr_beta: Adam step sizes of the slopes and the split multipliers.
        attack_restarts: random starts of the PGD falsifier before the search.
        attack_steps: PGD steps per attack.
        attack_every: attack from the worst domains' relaxation minimisers every this many batches (0: never).
        input_split_dims: search by bisecting the input box when it has at most this many dimensions of
            non-zero width (0: never).
        refine_neurons: per batch and layer above a new split, recompute (CROWN) the pre-activation bounds of up
            to this many unstable neurons (the widest); 0: keep the inherited bounds.
        float32_steps: take the multipliers' gradient steps in float32 (about twice as fast on CPU); the bound
            itself is always one float64 pass with the multipliers found.
        proof_margin: a domain counts as proven only when its lower bound of v exceeds this (in the property's
            units; 0: any positive bound). The bounds are for the network in exact arithmetic; a margin of the
            order of the model's float32 rounding (about 1e-5 for MNIST MLP logits) keeps proofs away from
            properties that only rounding decides (THEORY.md section 13). Not a proof about the rounding.
        leaf_tolerance: a leaf LP's minimum must exceed this to close the leaf (HiGHS's tolerance is ~1e-7).
    """

    branching: Branching = Branching.BABSR
    root_steps: int = 50
    root_intermediate_steps: int = 20
    steps: int = 10
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    attack_restarts: int = 32
    attack_steps: int = 50
    attack_every: int = 5
    input_split_dims: int = 10
    refine_neurons: int = 32
    float32_steps: bool = True
    proof_margin: float = 0.0
    leaf_tolerance: float = 1e-6
