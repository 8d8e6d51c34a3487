"""The VNN-COMP result text, and counterexamples written as exactly the values checked: inside the box as parsed,
float32 numbers wherever the box holds one."""

from __future__ import annotations

import torch

from nonsingular.verification import Counterexample, Status, VerificationResult, format_result
from nonsingular.verification.witness import snap_into_box


def test_every_status_is_one_word_and_sat_lists_x_then_y() -> None:
    for status in (Status.UNSAT, Status.TIMEOUT, Status.UNKNOWN, Status.ERROR):
        assert format_result(VerificationResult(status, 1.0)) == f"{status.value}\n"
    cex = Counterexample(torch.tensor([0.5, -1e-9], dtype=torch.float64), torch.tensor([2.0]), 0, 0, "test")
    text = format_result(VerificationResult(Status.SAT, 1.0, counterexample=cex))
    assert text == "sat\n((X_0 0.5)\n (X_1 -1e-09)\n (Y_0 2.0))\n"


def test_snapped_points_are_inside_the_box_and_float32_where_possible() -> None:
    g = torch.Generator().manual_seed(0)
    lower = torch.rand(1000, generator=g, dtype=torch.float64) * 10 - 5
    width = torch.rand(1000, generator=g, dtype=torch.float64) * 1e-6
    width[::3] = 0.0  # zero-width dimensions, mostly without a float32 value
    upper = lower + width
    x = (
        lower
        + (upper - lower) * torch.rand(1000, generator=g, dtype=torch.float64)
        + 1e-7 * torch.randn(1000, generator=g)
    )
    snapped = snap_into_box(x[None], lower, upper)[0]
    assert bool(((snapped >= lower) & (snapped <= upper)).all())
    representable = snapped.to(torch.float32).double() == snapped
    has_float32 = (lower.to(torch.float32).double() >= lower) & (lower.to(torch.float32).double() <= upper)
    assert bool(representable[has_float32].all())
    assert all(float(repr(v)) == v for v in snapped.tolist())  # the written text parses back to the same value
