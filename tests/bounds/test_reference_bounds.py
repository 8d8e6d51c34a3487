"""The graph engine reproduces the margins the Sequential-only IBP and CROWN gave on seeded MLPs (recorded in
tests/data/mlp_margins_reference.json before the engine replaced them), to float64 rounding."""

from __future__ import annotations

import json

import pytest
import torch

from nonsingular.bounds import margin_bounds
from tests.support import DATA
from tests.support.mlp_reference_cases import CASES, case

REFERENCE = json.loads((DATA / "mlp_margins_reference.json").read_text())


@pytest.mark.parametrize("index", range(len(CASES)))
@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_engine_matches_the_recorded_mlp_margins(index, method):
    model, x, y, threat = case(index)
    got = margin_bounds(model, x, y, threat, method).lower
    want = torch.tensor(REFERENCE[index][method], dtype=torch.float64)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
