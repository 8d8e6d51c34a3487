"""Seeded MLPs and threats whose margin bounds were recorded before the graph engine replaced the
Sequential-only IBP and CROWN (tests/data/mlp_margins_reference.json): the engine must reproduce them."""

from __future__ import annotations

import torch

from nonsingular import MLP, ThreatModel

#: (widths, threat keyword arguments); layer names of MLP(input (1, 4, 4)) are "2", "4", "6", ...
CASES: list[tuple[tuple[int, ...], dict]] = [
    ((16, 16), {"eps_x": 0.05}),
    ((16, 16), {"eps_x": 0.02, "eps_w": 0.01}),
    ((24, 12), {"eps_x": 0.01, "eps_w": 0.1, "weight_mode": "relative", "eps_b": 0.05}),
    ((16, 16, 8), {"eps_x": 0.03, "eps_w": 0.02, "weight_ball": "operator"}),
    ((16,), {"eps_w": 0.2, "weight_ball": "operator", "weight_mode": "relative", "eps_b": 0.1}),
    ((20, 20), {"eps_x": 0.05, "eps_w": 0.005, "eps_b": 0.01, "layer_eps": {"4": 0.02}, "domain": (-1.0, 1.0)}),
    ((16, 16), {"eps_x": 0.02, "eps_w": 0.01, "layers": ["2"]}),
]


def case(index: int) -> tuple[MLP, torch.Tensor, torch.Tensor, ThreatModel]:
    """The seeded model (float64), inputs (12, 1, 4, 4), labels and threat of case `index`."""
    widths, kwargs = CASES[index]
    torch.manual_seed(100 + index)
    model = MLP((1, 4, 4), widths, 5, 0.5, 0.25).double().eval()
    g = torch.Generator().manual_seed(200 + index)
    lo, hi = kwargs.get("domain", (0.0, 1.0))
    x = lo + (hi - lo) * torch.rand((12, 1, 4, 4), generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[-1] = (y[-1] + 1) % 5
    return model, x, y, ThreatModel(**kwargs)
