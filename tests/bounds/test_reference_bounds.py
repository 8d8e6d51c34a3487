"""The bound engine's numbers do not move: on seeded MLPs it reproduces the margins the Sequential-only IBP and
CROWN gave (recorded in tests/data/mlp_margins_reference.json before the engine replaced them) to float64
rounding, and on seeded CNNs and residual nets its IBP, CROWN and alpha-CROWN margins in float32 and float64 are
the stored ones (tests/data/graph_margins_reference.json; `--regenerate-references` rewrites them after an
intended change, see tests/support/graph_reference_cases.py)."""

from __future__ import annotations

import json

import pytest
import torch

from nonsingular.bounds import margin_bounds
from tests.support import DATA
from tests.support.graph_reference_cases import CASES as GRAPH_CASES
from tests.support.graph_reference_cases import METHODS, compute, load, regenerate
from tests.support.mlp_reference_cases import CASES, case

REFERENCE = json.loads((DATA / "mlp_margins_reference.json").read_text())

#: Absolute tolerance per dtype: float32 bounds of these cases are within 1.5e-7 of the float64 ones (margins of
#: order 0.5), so 1e-6 admits another summation order (threads, BLAS) and nothing else; float64 as for the MLPs.
TOLERANCE = {"float32": 1e-6, "float64": 1e-12}


@pytest.mark.parametrize("index", range(len(CASES)))
@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_engine_matches_the_recorded_mlp_margins(index, method):
    model, x, y, threat = case(index)
    got = margin_bounds(model, x, y, threat, method).lower
    want = torch.tensor(REFERENCE[index][method], dtype=torch.float64)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def graph_reference(request):
    """The stored graph references, rewritten first when pytest runs with --regenerate-references."""
    return regenerate() if request.config.getoption("--regenerate-references") else load()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(GRAPH_CASES))
def test_engine_matches_the_stored_graph_margins(graph_reference, name, dtype):
    got = compute(name, dtype)
    for method in METHODS:
        assert got[method].dtype == getattr(torch, dtype)
        want = torch.tensor(graph_reference[dtype][name][method], dtype=torch.float64)
        assert got[method].shape == want.shape, method
        torch.testing.assert_close(got[method].double(), want, rtol=0, atol=TOLERANCE[dtype], msg=method)


def test_the_stored_graph_margins_are_worth_storing(graph_reference):
    """Every case has margins that CROWN tightens over IBP and alpha-CROWN over CROWN, a certified margin and a
    negative one (the wrong label), so a change to any of the three methods moves some stored value."""
    for dtype, cases in graph_reference.items():
        assert cases.keys() == GRAPH_CASES.keys(), dtype
        for name, bounds in cases.items():
            ibp, crown, alpha = (torch.tensor(bounds[m], dtype=torch.float64) for m in METHODS)
            assert (crown > ibp + 1e-4).any() and (alpha > crown + 1e-5).any(), (dtype, name)
            assert (alpha > 0).any() and (alpha < 0).any(), (dtype, name)
