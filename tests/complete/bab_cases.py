"""Random small ReLU networks and properties, decided by branch and bound and by the exact MILP, side by side.

Shared by the tests (a fast slice) and benchmarks/bab_fuzzer.py (thousands of seeds). A disagreement is a BaB
answer the MILP contradicts: `unsat` where the MILP's minimum of v is below -TIE, or `sat` where it is above
+TIE (a sat answer carries a model-checked witness, so that would be a checker or MILP bug). Instances whose
minimum lies within TIE of 0 are ties (either answer may be right in floating point) and are not judged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nonsingular.complete import BaBOptions, BaBStatus, branch_and_bound, chain_from_model, milp_min_value

TIE = 1e-5


@dataclass
class Case:
    model: nn.Sequential
    lower: Tensor
    upper: Tensor
    spec: Tensor
    offset: Tensor
    groups: Tensor
    relu_mode: bool  # False: the input box is small enough for input bisection


@dataclass
class Outcome:
    seed: int
    exact: float
    status: BaBStatus
    disagree: bool
    decided: bool
    seconds: float
    domains: int
    mode: str


def random_case(seed: int) -> Case:
    """A random net (1-3 hidden layers of 3-10 ReLUs), box (some zero-width dims) and 1-3 rows in 1-3 disjuncts,
    with d placed around the rows' values at a random point so that both answers are common."""
    g = torch.Generator().manual_seed(seed)

    def randint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    n0 = randint(2, 12)
    widths = [randint(3, 10) for _ in range(randint(1, 3))]
    k = randint(2, 4)
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    prev = n0
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, k))
    model = nn.Sequential(*layers).eval()
    centre = torch.rand(n0, generator=g, dtype=torch.float64) * 2 - 1
    radius = (0.1 + 0.9 * torch.rand(n0, generator=g, dtype=torch.float64)) * (torch.rand(n0, generator=g) > 0.1).to(
        torch.float64
    )
    lower, upper = centre - radius, centre + radius
    rows = randint(1, 3)
    spec = torch.randn(rows, k, generator=g, dtype=torch.float64)
    groups = torch.randint(0, randint(1, rows), (rows,), generator=g)
    point = lower + torch.rand(n0, generator=g, dtype=torch.float64) * (upper - lower)
    with torch.no_grad():
        values = spec @ model.double()(point[None])[0]
        model.float()
    offset = values + (torch.rand(rows, generator=g, dtype=torch.float64) - 0.7) * 0.6 * spec.abs().sum(dim=1)
    relu_mode = bool(torch.rand(1, generator=g) < 0.6)
    return Case(model, lower, upper, spec, offset, groups, relu_mode)


def exact_value(case: Case) -> float:
    """The MILP's min over the box of v = min_g max_{i in g} (C_i f(x) - d_i)."""
    chain = chain_from_model(case.model, tuple(case.lower.shape), None)
    ids = torch.unique(case.groups)
    mask = case.groups[None, :] == ids[:, None]
    return milp_min_value(chain, case.lower, case.upper, case.spec, case.offset, mask).value


def run_case(seed: int, timeout: float = 5.0) -> Outcome:
    """Decide one random case both ways and judge the BaB answer (see the module docstring).

    Every other seed is made tight: d moves by a common shift (which moves v by minus that shift) so that the
    exact minimum lands within half a percent of the rows' scale from 0, on either side.
    """
    case = random_case(seed)
    exact = exact_value(case)
    if seed % 2 == 1:
        g = torch.Generator().manual_seed(seed + 10**6)
        scale = 0.005 * float(case.spec.abs().sum(dim=1).mean())
        case.offset = case.offset + exact + (2 * float(torch.rand(1, generator=g, dtype=torch.float64)) - 1) * scale
        exact = exact_value(case)
    options = BaBOptions(input_split_dims=0 if case.relu_mode else 10)
    result = branch_and_bound(
        case.model,
        case.lower,
        case.upper,
        case.spec,
        case.offset,
        groups=case.groups,
        timeout=timeout,
        seed=seed,
        options=options,
    )
    status = result.status
    disagree = (status is BaBStatus.UNSAT and exact < -TIE) or (status is BaBStatus.SAT and exact > TIE)
    if status is BaBStatus.SAT:
        witness = result.witness
        if witness is None or witness.value > 0 or witness.value_float32 > 0:
            disagree = True
        else:
            x = witness.x
            inside = bool(((x >= case.lower) & (x <= case.upper)).all())
            with torch.no_grad():
                rows = case.spec @ case.model.double()(x[None])[0] - case.offset
                case.model.float()
            ids = torch.unique(case.groups)
            hit = any(bool((rows[case.groups == i] <= 0).all()) for i in ids)
            disagree = disagree or not (inside and hit)
    decided = status in (BaBStatus.SAT, BaBStatus.UNSAT)
    return Outcome(
        seed=seed,
        exact=exact,
        status=status,
        disagree=disagree,
        decided=decided,
        seconds=result.stats.time_total,
        domains=result.stats.domains_visited,
        mode=result.mode,
    )


@dataclass
class JointOutcome:
    seed: int
    threat: str
    statuses: list[str]
    violations: int  # examples proven unsat where an attack or a vertex of the threat set misclassifies


def run_joint_case(seed: int, timeout: float = 2.0, examples: int = 4) -> JointOutcome:
    """BaB under a random joint threat (either ball, either mode, maybe bias radii) on a random MLP: every example
    it proves robust must stay correctly classified under verified PGD (inputs and weights) and at random
    vertices of the threat set (tests/bounds_support.py, both evaluated by the ordinary module)."""
    import bounds_support
    from nonsingular import PGD, ThreatModel, verify

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n0, k = int(torch.randint(3, 9, (1,), generator=g)), int(torch.randint(2, 5, (1,), generator=g))
    width = int(torch.randint(4, 12, (1,), generator=g))
    model = nn.Sequential(nn.Linear(n0, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, k))
    model = model.eval()
    ball = "operator" if torch.rand(1, generator=g) < 0.3 else "elementwise"
    mode = "relative" if torch.rand(1, generator=g) < 0.5 else "absolute"
    eps_w = float(torch.rand(1, generator=g)) * (0.1 if mode == "relative" else 0.03)
    eps_b = float(torch.rand(1, generator=g)) * 0.02 if torch.rand(1, generator=g) < 0.3 else 0.0
    threat = ThreatModel(
        eps_x=0.02 + 0.1 * float(torch.rand(1, generator=g)),
        eps_w=eps_w,
        eps_b=eps_b,
        weight_ball=ball,
        weight_mode=mode,
    )
    x = 0.2 + 0.6 * torch.rand(examples, n0, generator=g)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    proven = torch.zeros(examples, dtype=torch.bool)
    statuses = []
    for i in range(examples):
        lo, hi = threat.input_bounds(x[i : i + 1])
        label = int(y[i])
        others = [j for j in range(k) if j != label]
        spec = torch.zeros(len(others), k, dtype=torch.float64)
        for r, j in enumerate(others):
            spec[r, label], spec[r, j] = 1.0, -1.0
        options = BaBOptions(input_split_dims=0 if (seed + i) % 2 else 10)
        res = branch_and_bound(
            model,
            lo[0],
            hi[0],
            spec,
            torch.zeros(len(others), dtype=torch.float64),
            groups=torch.arange(len(others)),
            threat=threat,
            timeout=timeout,
            seed=seed,
            options=options,
        )
        statuses.append(res.status.value)
        proven[i] = res.status is BaBStatus.UNSAT
    attack = PGD(steps=40, restarts=2, loss="margin", seed=seed)(model, x, y, threat)
    check = verify(model, x, y, attack)
    if not check.passed:
        raise AssertionError(f"seed {seed}: the attack's result failed verification: {check.problems}")
    # A float32 margin below -1e-5 contradicts a proof (float32 rounding of these logits is far smaller).
    off_label = torch.eye(k)[y] * 1e9
    wrong = (bounds_support.margins(check.logits.float(), y) + off_label).amin(dim=1) < -1e-5
    vertices = bounds_support.vertex_logits(model, x, threat, 64, seed=seed)
    wrong |= (bounds_support.margins(vertices, y).min(dim=0).values + off_label).amin(dim=1) < -1e-5
    return JointOutcome(seed, str(threat), statuses, int((wrong & proven).sum()))
