"""The typed verification property of THEORY.md section 12: input boxes, and an unsafe output region.

A property is a disjunction of cases; each case is an input box B and an unsafe region U, a disjunction of
conjunctions {y : C y <= d}. The property *holds* ("unsat", verified) iff no case has an x in B with f(x) in U.
A VNNLIB file with a top-level `or` over input boxes gives one case per box, all with the same U; one whose
disjuncts mix input and output constraints gives one case per disjunct. The box is taken as written, in the
network's own input scale: no domain is imposed (zero-width dimensions are legal).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["Case", "Conjunction", "Property", "PropertyError"]


class PropertyError(InputError):
    """A property file or object is malformed or outside the supported subset; the message names the line."""


@dataclass(frozen=True)
class Conjunction:
    """One convex piece of the unsafe region: {y : C y <= d}.

    Attributes:
        C: (R, num_outputs) float64 coefficients, one row per inequality (R = 0: every output is unsafe).
        d: (R,) float64 right-hand sides.
    """

    C: Tensor
    d: Tensor

    def __post_init__(self) -> None:
        if self.C.dim() != 2 or self.d.dim() != 1 or self.C.shape[0] != self.d.shape[0]:
            raise PropertyError(
                f"a conjunction needs C (R, m) and d (R,), got {tuple(self.C.shape)} and {tuple(self.d.shape)}"
            )
        if self.C.dtype != torch.float64 or self.d.dtype != torch.float64:
            raise PropertyError("a conjunction's C and d must be float64")
        if not (torch.isfinite(self.C).all() and torch.isfinite(self.d).all()):
            raise PropertyError("a conjunction's C and d must be finite")

    def violation(self, y: Tensor) -> Tensor:
        """(N,) max_r (C y - d)_r for outputs y (N, m), in float64: <= 0 exactly when y is in this piece
        (-inf for R = 0: everything is)."""
        if self.C.shape[0] == 0:
            return torch.full((y.shape[0],), float("-inf"), dtype=torch.float64, device=y.device)
        values = y.to(torch.float64) @ self.C.to(y.device).T - self.d.to(y.device)
        return values.amax(dim=1)


@dataclass(frozen=True)
class Case:
    """One input box with the unsafe region reachable from it.

    Attributes:
        lower, upper: (num_inputs,) float64 bounds, lower <= upper, finite.
        unsafe: the conjunctions whose union is the unsafe region (at least one).
    """

    lower: Tensor
    upper: Tensor
    unsafe: tuple[Conjunction, ...]

    def __post_init__(self) -> None:
        if self.lower.dim() != 1 or self.lower.shape != self.upper.shape:
            raise PropertyError(
                f"a box needs lower and upper of one shape (n,), got {tuple(self.lower.shape)} and "
                f"{tuple(self.upper.shape)}"
            )
        if self.lower.dtype != torch.float64 or self.upper.dtype != torch.float64:
            raise PropertyError("a box's bounds must be float64")
        if not (torch.isfinite(self.lower).all() and torch.isfinite(self.upper).all()):
            raise PropertyError("a box's bounds must be finite")
        bad = (self.lower > self.upper).nonzero()
        if len(bad):
            i = int(bad[0])
            raise PropertyError(f"the box is empty: X_{i} >= {float(self.lower[i])!r} and <= {float(self.upper[i])!r}")
        if not self.unsafe:
            raise PropertyError("a case needs at least one unsafe conjunction")

    def contains(self, x: Tensor) -> Tensor:
        """(N,) whether each flat point x (N, n) lies in the box, compared in float64."""
        x = x.to(torch.float64)
        return ((x >= self.lower) & (x <= self.upper)).all(dim=1)

    def unsafe_violation(self, y: Tensor) -> Tensor:
        """(N,) min over the conjunctions of their violation: <= 0 exactly when y is unsafe."""
        return torch.stack([c.violation(y) for c in self.unsafe]).amin(dim=0)


@dataclass(frozen=True)
class Property:
    """A verification property: unsat (verified) iff no case reaches its unsafe region.

    Attributes:
        cases: the input boxes with their unsafe regions (at least one).
        num_inputs, num_outputs: sizes of the flat input and output.
    """

    cases: tuple[Case, ...]
    num_inputs: int
    num_outputs: int

    def __post_init__(self) -> None:
        if not self.cases:
            raise PropertyError("a property needs at least one input box")
        for case in self.cases:
            if case.lower.shape[0] != self.num_inputs:
                raise PropertyError(f"a box has {case.lower.shape[0]} inputs, the property {self.num_inputs}")
            for conj in case.unsafe:
                if conj.C.shape[1] != self.num_outputs:
                    raise PropertyError(f"a constraint has {conj.C.shape[1]} outputs, the property {self.num_outputs}")

    def pieces(self) -> list[tuple[int, int]]:
        """(case index, conjunction index) of every convex piece: each is attacked and bounded separately."""
        return [(i, j) for i, case in enumerate(self.cases) for j in range(len(case.unsafe))]
