"""Random small graphs (conv, BatchNorm, residual add, concatenation, pooling) and random threats, and the check
that no bound is beaten by a point of the threat set found with explicit per-example weights (checked PGD with
margin and cross-entropy losses, and random vertices; threat_points.py). Shared by tests/bounds/test_graphs.py (a
few cases) and benchmarks/bound_fuzzer.py (>= 10,000 examples).

With execution="float32" the network is a float32 one: attacks and vertices run it in float32 (the logits the
executed model really computes), and every method's bound for the executed model (exact lower bound minus the
rounding bound, bounds/rounding.py) must lie below those margins with no rounding allowance.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nonsingular import ThreatModel
from nonsingular.bounds import margin_bounds
from nonsingular.models import Normalize
from tests.support.threat_points import attacked_logits, margins, tolerance, vertex_logits

#: Bound methods the fuzzer checks; "alpha-crown-final" is alpha-CROWN optimising the final margins' slopes only.
METHODS = ("ibp", "crown", "alpha-crown", "alpha-crown-final")


class RandomGraph(nn.Module):
    """Normalize -> conv stem (random stride/padding/dilation/groups) [-> BN] -> ReLU -> a middle part (residual
    block with BN and an identity or 1x1-conv skip, two branches concatenated, or a plain conv) -> pooling (none,
    max, avg, adaptive avg) -> Flatten -> Linear -> ReLU -> Linear.
    """

    def __init__(self, rng: random.Random, in_ch: int, size: int, classes: int) -> None:
        super().__init__()
        c = rng.choice([2, 4])
        groups = rng.choice([1, 2]) if in_ch % 2 == 0 else 1
        self.normalize = Normalize(rng.choice([0.0, 0.4]), rng.choice([0.5, 1.0]))
        kernel, stride, padding, dilation = (
            rng.choice([1, 2, 3]),
            rng.choice([1, 2]),
            rng.choice([0, 1]),
            rng.choice([1, 1, 2]),
        )
        if (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1 < 3:
            stride, padding, dilation = 1, 1, 1  # keep at least 3 x 3 positions for the layers after the stem
        self.stem = nn.Conv2d(
            in_ch,
            c,
            kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=rng.random() < 0.7,
        )
        self.stem_bn = nn.BatchNorm2d(c) if rng.random() < 0.5 else nn.Identity()
        self.middle = rng.choice(["residual", "cat", "plain"])
        self.c_out = c
        if self.middle == "residual":
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=rng.random() < 0.5)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=rng.choice([1, 2]))
            self.skip = nn.Conv2d(c, c, 1) if rng.random() < 0.5 else nn.Identity()
        elif self.middle == "cat":
            self.conv1 = nn.Conv2d(c, 2, 3, padding=1)
            self.conv2 = nn.Conv2d(c, 1, 1)
            self.c_out = 3
        else:
            self.conv1 = nn.Conv2d(c, 3, 2, padding=rng.choice([0, 1]))
            self.c_out = 3
        self.pool = rng.choice(
            [nn.Identity(), nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(2), nn.MaxPool2d(2, stride=1)]
        )
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, in_ch, size, size)).shape[1]
        hidden = rng.choice([3, 6])
        self.fc1 = nn.Linear(n_flat, hidden)
        self.fc2 = nn.Linear(hidden, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                # Default inits make tiny nets nearly constant; larger weights make the threat matter.
                m.weight.data.mul_(rng.choice([1.5, 3.0]))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 2.0)
                m.weight.data.uniform_(-1.5, 1.5)
                m.bias.data.uniform_(-0.3, 0.3)

    def features(self, x: Tensor) -> Tensor:
        h = torch.relu(self.stem_bn(self.stem(self.normalize(x))))
        if self.middle == "residual":
            h = torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(h)))) + self.skip(h))
        elif self.middle == "cat":
            h = torch.relu(torch.cat([self.conv1(h), self.conv2(h)], dim=1))
        else:
            h = torch.relu(self.conv1(h))
        return torch.flatten(self.pool(h), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(self.features(x))))


def random_threat(rng: random.Random, names: list[str]) -> ThreatModel:
    """Any threat: both balls and modes, per-layer eps, layer subsets, bias radii, two domains."""
    relative = rng.random() < 0.5
    eps_w_values = [0.0, 0.02, 0.1, 0.3] if relative else [0.0, 0.005, 0.02, 0.1]
    layers = None if rng.random() < 0.6 else rng.sample(names, rng.randint(1, len(names)))
    chosen = names if layers is None else layers
    overrides = rng.sample(chosen, rng.randint(0, min(2, len(chosen))))
    return ThreatModel(
        eps_x=rng.choice([0.0, 0.02, 0.05, 0.2]),
        eps_w=rng.choice(eps_w_values),
        weight_ball=rng.choice(["elementwise", "operator"]),
        weight_mode="relative" if relative else "absolute",
        eps_b=rng.choice([0.0, 0.0, 0.01, 0.05]),
        layers=layers,
        layer_eps={name: rng.choice(eps_w_values) for name in overrides},
        domain=rng.choice([(0.0, 1.0), (-1.0, 1.0)]),
    )


@dataclass
class CaseResult:
    """Outcome of one fuzz case: examples checked and, per method, violations (a found margin below the bound,
    beyond float64 rounding) and certified examples."""

    examples: int
    violations: dict[str, int]
    certified: dict[str, int]
    looser: int  # examples where CROWN < IBP or alpha-CROWN < CROWN (must be 0 too)
    closest: float  # smallest found margin minus alpha-CROWN's bound (>= 0; near 0: a tight case)


def _closest(found: Tensor, lower: Tensor, y: Tensor) -> float:
    own = torch.nn.functional.one_hot(y, lower.shape[1]).bool()
    return float((found - lower).masked_fill(own, float("inf")).amin())


def run_case(seed: int, n: int = 6, steps: int = 20, alpha_steps: int = 10, execution: str = "float64") -> CaseResult:
    """Build graph `seed`, draw a threat and inputs, and compare every method with the attacks (run in the
    `execution` dtype: "float64", or "float32" for the executed-model check)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    in_ch, size, classes = rng.choice([1, 2]), rng.choice([5, 6, 7]), rng.choice([2, 3, 4])
    dtype = {"float64": torch.float64, "float32": torch.float32}[execution]
    model = RandomGraph(rng, in_ch, size, classes).to(dtype).eval()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    threat = random_threat(rng, names)
    lo, hi = threat.domain
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand((n, in_ch, size, size), generator=g, dtype=torch.float64)
    x = x.to(dtype)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[-1] = (y[-1] + 1) % classes
    found = [attacked_logits(model, x, y, threat, "margin", steps=steps)]
    found.append(attacked_logits(model, x, y, threat, "ce", steps=steps))
    found += list(vertex_logits(model, x, threat, n_vertices=8, seed=seed))
    # float64 differences of the executed logits: the executed model's margins exactly
    found_margins = margins(torch.stack(found).double(), y)
    violations, certified, lowers = {}, {}, {}
    for method in METHODS:
        with torch.no_grad():
            final = method == "alpha-crown-final"
            options = {"alpha_steps": alpha_steps, "alpha_final_only": final}
            bounds = margin_bounds(model, x.double(), y, threat, "alpha-crown" if final else method, **options)
        lower = bounds.lower
        assert torch.isfinite(lower).all(), f"{method}: non-finite bound"
        lowers[method] = lower
        if dtype == torch.float64:  # float64 rounding of both sides is allowed for
            bad = (lower[None] - found_margins > tolerance(lower, found_margins)).any(dim=(0, 2))
        else:  # the executed model's bound accounts for float32 rounding itself: no allowance
            executed = bounds.executed_lower
            bad = (executed[None] - found_margins > 1e-3 * tolerance(executed)).any(dim=(0, 2))
        violations[method] = int(bad.sum())
        certified[method] = int(bounds.certified.sum())
    tol = tolerance(lowers["ibp"])
    looser = (lowers["crown"] < lowers["ibp"] - tol).any(dim=1)
    for alpha in ("alpha-crown", "alpha-crown-final"):
        looser |= (lowers[alpha] < lowers["crown"] - tol).any(dim=1)
    return CaseResult(n, violations, certified, int(looser.sum()), _closest(found_margins, lowers["alpha-crown"], y))
