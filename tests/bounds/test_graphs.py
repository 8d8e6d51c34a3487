"""The graph bound engine on CNNs and residual nets: soundness against checked attacks with explicit weights on
random graphs, exactness oracles for single Linear / Conv layers, ordering of the methods, chunking, and errors.
The long fuzz run (>= 10,000 examples) is benchmarks/bound_fuzzer.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nonsingular import ThreatModel
from nonsingular.bounds import UnsupportedLayerError, margin_bounds
from nonsingular.models import build_model
from tests.support.graph_fuzz import run_case
from tests.support.threat_points import margins, tolerance, vertex_logits


@pytest.mark.parametrize("seed", range(6))
def test_random_graphs_are_never_beaten_by_attacks(seed):
    result = run_case(seed, n=4, steps=10, alpha_steps=3)
    assert result.violations == {"ibp": 0, "crown": 0, "alpha-crown": 0, "alpha-crown-final": 0}, result
    assert result.looser == 0, result
    assert result.closest >= -1e-9


def _brute_force(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """(N, K) exact minimum margins of flatten(layer(x)) over every vertex of the weight ball (the margin is linear
    in the weights, so a vertex attains the minimum)."""
    w = layer.weight.detach()
    if threat.weight_ball.value == "elementwise":
        rho = threat.weight_radius("0", w)
        vertices = (
            torch.tensor(s, dtype=w.dtype).reshape(w.shape) * rho for s in itertools.product([-1, 1], repeat=w.numel())
        )
    else:
        e = threat.operator_radius("0", w)
        row = w[0].numel()
        choices = [sign * F.one_hot(torch.tensor(j), row).to(w.dtype) for j in range(row) for sign in (-1, 1)]
        vertices = (torch.stack(rows).reshape(w.shape) * e for rows in itertools.product(choices, repeat=w.shape[0]))
    best = None
    for d in vertices:
        z = torch.func.functional_call(layer, {"weight": w + d, "bias": layer.bias}, (x,)).flatten(1)
        m = z.gather(1, y[:, None]) - z
        best = m if best is None else torch.minimum(best, m)
    return best


LAYERS = {
    "linear": (lambda: nn.Linear(3, 3), (3,)),
    "conv2d": (lambda: nn.Conv2d(1, 2, 2), (1, 3, 3)),
    "conv2d-strided": (lambda: nn.Conv2d(2, 2, (1, 2), stride=2, padding=1, bias=False), (2, 2, 3)),
    "conv1d": (lambda: nn.Conv1d(2, 2, 2, dilation=2), (2, 5)),
}


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize(
    "threat",
    [
        ThreatModel(eps_w=0.1),
        ThreatModel(eps_w=0.3, weight_mode="relative"),
        ThreatModel(eps_w=0.1, weight_ball="operator"),
        ThreatModel(eps_w=0.2, weight_ball="operator", weight_mode="relative"),
    ],
    ids=["abs", "rel", "op-abs", "op-rel"],
)
def test_single_layer_weight_perturbation_is_exact(name, threat):
    """Element-wise and operator balls without input perturbation: CROWN equals the brute-force optimum, for a
    convolution too (its kernel is shared by all positions, and the fixed input makes the term exact)."""
    factory, shape = LAYERS[name]
    torch.manual_seed(3)
    layer = factory().double()
    model = nn.Sequential(layer, nn.Flatten()) if len(shape) > 1 else nn.Sequential(layer)
    x = torch.rand(3, *shape, dtype=torch.float64)
    k = model(x).shape[1]
    y = torch.tensor([0, 1, k - 1])
    lower = margin_bounds(model, x, y, threat, "crown").lower
    exact = _brute_force(layer, x, y, threat)
    torch.testing.assert_close(lower, exact, rtol=0, atol=1e-12)
    assert (margin_bounds(model, x, y, threat, "ibp").lower <= exact + 1e-12).all()


def _bn_stats(model: nn.Module) -> nn.Module:
    torch.manual_seed(5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


SPECS = [
    {"name": "cnn", "channels": [3, 4], "hidden": 12},
    {"name": "lenet", "channels": [2, 3], "hidden": [10, 8], "pool": "max"},
    {"name": "resnet", "channels": [3, 4], "hidden": 10, "pooled": 2},
]


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_methods_are_ordered_and_sound_on_the_model_builders(spec):
    torch.manual_seed(0)
    model = _bn_stats(build_model({**spec, "input_shape": [1, 8, 8], "num_classes": 4}).double())
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    threat = ThreatModel(eps_x=0.02, eps_w=0.005, eps_b=0.01)
    lowers = {m: margin_bounds(model, x, y, threat, m, alpha_steps=3).lower for m in ("ibp", "crown", "alpha-crown")}
    found = margins(vertex_logits(model, x, threat, n_vertices=16), y)
    tol = tolerance(found)
    for method, lower in lowers.items():
        assert (lower[None] <= found + tol).all(), method
    assert (lowers["crown"] >= lowers["ibp"] - tol).all()
    assert (lowers["alpha-crown"] >= lowers["crown"] - tol).all()
    assert (lowers["crown"] > lowers["ibp"] + 1e-6).any()  # CROWN does tighten these nets


def test_a_small_memory_budget_chunks_without_changing_the_bounds():
    torch.manual_seed(0)
    model = _bn_stats(build_model({**SPECS[2], "input_shape": [1, 6, 6], "num_classes": 3}).double())
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    threat = ThreatModel(eps_x=0.03, eps_w=0.01)
    big = margin_bounds(model, x, y, threat, "crown").lower
    small = margin_bounds(model, x, y, threat, "crown", memory_mb=0.05).lower
    torch.testing.assert_close(small, big, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="memory_mb"):
        margin_bounds(model, x, y, threat, "crown", memory_mb=0)


def test_cpu_chunks_stay_within_the_cap_under_a_larger_budget(monkeypatch):
    from nonsingular.bounds import engine

    torch.manual_seed(0)
    model = _bn_stats(build_model({**SPECS[2], "input_shape": [1, 6, 6], "num_classes": 3}).double())
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    threat = ThreatModel(eps_x=0.03, eps_w=0.01)
    passes: list[int] = []
    run = engine.GraphBounds._backward
    monkeypatch.setattr(engine.GraphBounds, "_backward", lambda self, *a: passes.append(1) or run(self, *a))
    lower, count = {}, {}
    for cap in (float("inf"), 0.05):
        monkeypatch.setattr(engine, "CPU_CHUNK_MB", cap)
        passes.clear()
        lower[cap] = margin_bounds(model, x, y, threat, "crown", memory_mb=4096).lower
        count[cap] = len(passes)
    assert count[0.05] > count[float("inf")]  # the cap, not the budget, sized the chunks
    torch.testing.assert_close(lower[0.05], lower[float("inf")], rtol=0, atol=1e-12)


def test_an_interval_only_rule_is_refused_by_crown_with_the_file_to_edit(monkeypatch):
    from nonsingular.bounds import RULES, IntervalOnlyRule

    monkeypatch.setitem(RULES, nn.Tanh, IntervalOnlyRule(lambda m, lb, ub, lt: (torch.tanh(lb), torch.tanh(ub))))
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x, y = torch.rand(2, 3, dtype=torch.float64), torch.tensor([0, 1])
    margin_bounds(model, x, y, ThreatModel(eps_x=0.1), "ibp")
    with pytest.raises(UnsupportedLayerError, match=r"op '1' \(Tanh\).*ops_structure\.py"):
        margin_bounds(model, x, y, ThreatModel(eps_x=0.1), "crown")


@pytest.mark.parametrize("seed", range(8))
def test_patch_coefficients_give_the_dense_bounds(seed, monkeypatch):
    """Rows on (C, H, W) nodes travel as windows (bounds/patches.py); with every rule's patch form switched off
    the same bounds come from dense coefficients (random graphs: conv strides/padding/dilation/groups, BatchNorm,
    residual adds, pooling; random threats in both balls and modes)."""
    import random

    from nonsingular.bounds.registry import RULES, Rule
    from tests.support.graph_fuzz import RandomGraph, random_threat

    rng = random.Random(seed)
    torch.manual_seed(seed)
    model = RandomGraph(rng, 2, 7, 3).double().eval()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    threat = random_threat(rng, names)
    lo, hi = threat.domain
    x = lo + (hi - lo) * torch.rand((3, 2, 7, 7), dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    patched = margin_bounds(model, x, y, threat, "crown").lower
    for rule in {type(r) for r in RULES.values()}:
        monkeypatch.setattr(rule, "backward_patches", Rule.backward_patches)
    dense = margin_bounds(model, x, y, threat, "crown").lower
    torch.testing.assert_close(patched, dense, rtol=0, atol=1e-10)
