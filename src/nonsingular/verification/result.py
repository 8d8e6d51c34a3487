"""What `verify_property` answers, and the VNN-COMP result file that carries it.

The file is one word, `unsat`, `timeout`, `unknown` or `error`, or `sat` followed by the counterexample
`((X_0 v)\n (X_1 v)\n ... (Y_0 v) ...)`: the exact input values that were checked inside the box (decimal
strings that parse back to the same float64) and the outputs the reference runtime computed for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from torch import Tensor

from ..runtime.files import atomic_write

__all__ = ["Counterexample", "Status", "VerificationResult", "format_result", "write_result"]


class Status(str, Enum):
    """unsat: verified (no input of the box reaches the unsafe region); sat: a checked counterexample; timeout:
    the time ran out; unknown: the bounds were inconclusive and no counterexample was found; error: the instance
    could not be run (message beside it)."""

    UNSAT = "unsat"
    SAT = "sat"
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"
    ERROR = "error"


@dataclass
class Counterexample:
    """A checked point of the unsafe region.

    Attributes:
        x: (num_inputs,) float64 input values, inside the case's box exactly; the model ran on them as float32.
        y: (num_outputs,) float64 outputs the checking runtime computed at float32(x).
        case, conjunction: which box and which unsafe conjunction it reaches.
        checked_by: what computed y ("onnxruntime" or "torch-float32").
        weights: for a joint threat, the perturbed parameters W' by the model's parameter names (else empty).
    """

    x: Tensor
    y: Tensor
    case: int
    conjunction: int
    checked_by: str
    weights: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class VerificationResult:
    """The answer to one property, with how it was reached.

    Attributes:
        status: the answer.
        seconds: wall-clock time spent.
        decided_by: what settled it ("attack", "ibp", "crown", "alpha-crown", "bab", "" for timeout/unknown).
        counterexample: set exactly when status is sat.
        message: why, for error and unknown (one line).
        stats: numbers worth recording (attack rounds, bound calls, the best lower bound per piece, ...).
    """

    status: Status
    seconds: float
    decided_by: str = ""
    counterexample: Counterexample | None = None
    message: str = ""
    stats: dict[str, float] = field(default_factory=dict)


def _number(v: float) -> str:
    return repr(float(v))


def format_result(result: VerificationResult) -> str:
    """The VNN-COMP result text (ends with a newline)."""
    if result.status is not Status.SAT:
        return f"{result.status.value}\n"
    cex = result.counterexample
    if cex is None:
        raise ValueError("a sat result needs its counterexample")
    lines = [f"(X_{i} {_number(v)})" for i, v in enumerate(cex.x.tolist())]
    lines += [f"(Y_{j} {_number(v)})" for j, v in enumerate(cex.y.tolist())]
    return "sat\n(" + "\n ".join(lines) + ")\n"


def write_result(path: str | Path, result: VerificationResult) -> None:
    """Write the result file atomically (a kill never leaves half of it)."""
    text = format_result(result)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    atomic_write(path, write)
