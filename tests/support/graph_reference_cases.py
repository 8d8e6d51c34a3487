"""Seeded small CNNs and residual nets under joint threats whose margin lower bounds (IBP, CROWN, alpha-CROWN) are
stored in tests/data/graph_margins_reference.json, in float32 and in float64.

The soundness tests say a bound is never beaten; they do not notice a bound that moves (looser, or tighter by a
mistake that a fuzz run has not yet caught). These stored values do: any change of the engine's numbers on a
convolution, BatchNorm, residual add or pooling fails the comparison, and an intended change is regenerated and
reviewed as a diff of the JSON file:

    pytest tests/bounds/test_reference_bounds.py --regenerate-references

(The MLP references in mlp_margins_reference.json are different: recorded from the Sequential-only code the graph
engine replaced, they are a record of that code and are never regenerated.)
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor, nn

from nonsingular import ThreatModel
from nonsingular.bounds import margin_bounds
from nonsingular.models import build_model
from tests.support import DATA

REFERENCE_FILE = DATA / "graph_margins_reference.json"
METHODS = ("ibp", "crown", "alpha-crown")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: Few alpha-CROWN steps keep the test fast; the stored values are those of exactly this many steps.
ALPHA_STEPS = 3

#: architecture -> (spec, seed): one seeded model each, whose ReLUs are neither all dead nor all stable under the
#: cases' threats (a dead net would store the same constant for every method).
ARCHITECTURES: dict[str, tuple[dict[str, Any], int]] = {
    "cnn": ({"name": "cnn", "channels": [3, 4], "hidden": 12}, 300),
    "resnet": ({"name": "resnet", "channels": [2, 3], "hidden": 8, "pooled": 2}, 305),
}

#: name -> (architecture, threat keyword arguments): both balls and modes, bias radii, a layer subset.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "cnn-input": ("cnn", {"eps_x": 0.03}),
    "cnn-joint-bias": ("cnn", {"eps_x": 0.01, "eps_w": 0.004, "eps_b": 0.01}),
    "cnn-operator-relative": (
        "cnn",
        {"eps_x": 0.01, "eps_w": 0.02, "weight_ball": "operator", "weight_mode": "relative"},
    ),
    "resnet-input": ("resnet", {"eps_x": 0.05}),
    "resnet-joint-bias": ("resnet", {"eps_x": 0.005, "eps_w": 0.002, "eps_b": 0.005}),
    "resnet-layer-subset": (
        "resnet",
        {"eps_x": 0.01, "eps_w": 0.01, "layers": ["block1.conv2", "head.1"], "layer_eps": {"head.1": 0.02}},
    ),
}


def _batchnorm_statistics(model: nn.Module, seed: int) -> None:
    """Running statistics and scales away from the identity, so BatchNorm's rule is exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g, dtype=torch.float64))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g, dtype=torch.float64))


def case(name: str, dtype: str) -> tuple[nn.Module, Tensor, Tensor, ThreatModel]:
    """The seeded model (eval mode, in `dtype`), 4 inputs (1, 6, 6), labels and threat of case `name`.

    Everything is drawn in float64 and then cast, so the float32 case is the float64 one rounded once; labels
    are the float64 model's predictions, with the last one changed to a wrong class (a negative margin)."""
    arch, threat_kwargs = CASES[name]
    spec, seed = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    model = build_model({**spec, "input_shape": [1, 6, 6], "num_classes": 4}).double()
    _batchnorm_statistics(model, seed + 100)
    model.eval()
    g = torch.Generator().manual_seed(500 + list(CASES).index(name))
    x = torch.rand((4, 1, 6, 6), generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[-1] = (y[-1] + 1) % 4
    return model.to(DTYPES[dtype]), x.to(DTYPES[dtype]), y, ThreatModel(**threat_kwargs)


def compute(name: str, dtype: str) -> dict[str, Tensor]:
    """The engine's (4, 4) margin lower bounds of case `name` in `dtype`, for every method."""
    model, x, y, threat = case(name, dtype)
    with torch.no_grad():
        return {m: margin_bounds(model, x, y, threat, m, alpha_steps=ALPHA_STEPS).lower for m in METHODS}


def regenerate() -> dict[str, dict[str, dict[str, list[list[float]]]]]:
    """Compute every case in both dtypes and write REFERENCE_FILE (dtype -> case -> method -> rows)."""
    stored = {
        dtype: {name: {m: v.tolist() for m, v in compute(name, dtype).items()} for name in CASES} for dtype in DTYPES
    }
    text = json.dumps(stored, indent=1) + "\n"
    partial = REFERENCE_FILE.with_suffix(".json.partial")
    partial.write_text(text)
    partial.replace(REFERENCE_FILE)
    return stored


def load() -> dict[str, dict[str, dict[str, list[list[float]]]]]:
    """The stored references (dtype -> case -> method -> rows of margin lower bounds)."""
    stored: dict[str, dict[str, dict[str, list[list[float]]]]] = json.loads(REFERENCE_FILE.read_text())
    return stored
