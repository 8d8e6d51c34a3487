"""Exact references by linear programming (scipy.optimize, HiGHS), for input-only threats.

- `milp_min_value`: the exact minimum over the box of the property's value v(x) = min_g max_{i in g}
  (C_i f(x) - d_i), by a big-M mixed-integer program per disjunct g (min t s.t. C_i f(x) - d_i <= t for i in g,
  each unstable ReLU encoded with one binary and M from interval bounds). The unsafe region is non-empty iff
  that minimum is <= 0. Exponential in the worst case: for small networks (tests, the fuzzer, users' toys).
- `leaf_lp`: the same question on one fully split domain of the search, where the network is affine and the
  splits are linear constraints: an LP, which makes the search complete on input-only threats.

HiGHS works to a feasibility tolerance (about 1e-7), so callers treat values within a margin of 0 as undecided.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .bounding import _ibp_layer
from .chain import Chain

__all__ = ["MILPResult", "leaf_lp", "milp_min_value"]


@dataclass(frozen=True)
class MILPResult:
    """value: the exact minimum of v over the box (to the solver's tolerance); x: a minimiser (flattened h_0
    coordinates), or None if the solver failed; status: the solver's message of the last disjunct."""

    value: float
    h0: Tensor | None
    status: str


def _interval_bounds(chain: Chain, lo0: Tensor, hi0: Tensor) -> list[tuple[Tensor, Tensor]]:
    out = []
    lo, hi = lo0[None], hi0[None]
    for i, layer in enumerate(chain.layers[:-1]):
        z_lo, z_hi = _ibp_layer(layer, lo, hi, nonneg=i > 0)
        pad = 1e-7 * (1 + torch.maximum(z_lo.abs(), z_hi.abs()))  # keep M valid through the solver's rounding
        out.append(((z_lo - pad)[0], (z_hi + pad)[0]))
        lo, hi = z_lo.clamp(min=0), z_hi.clamp(min=0)
    return out


def milp_min_value(
    chain: Chain, lo0: Tensor, hi0: Tensor, spec: Tensor, offset: Tensor, groups: Tensor, time_limit: float = 60.0
) -> MILPResult:
    """Exact min over h_0 in [lo0, hi0] (n_0,) of v (see the module docstring); the chain must be input-only.

    Raises:
        ValueError: the chain carries a weight threat (no exact MILP for it here).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp  # type: ignore[import-untyped]

    if chain.perturbs_weights:
        raise ValueError("milp_min_value handles input-only threats (the chain has a weight threat)")
    bounds = _interval_bounds(chain, lo0.double(), hi0.double())
    n0 = lo0.numel()
    # Variables: h_0, then per hidden layer h_l (n_l) and a_l (n_l binaries), then t.
    sizes = [n0] + [2 * int(layer.weight.shape[0]) for layer in chain.layers[:-1]] + [1]
    nvar = sum(sizes)
    lb_v = np.full(nvar, 0.0)
    ub_v = np.full(nvar, 0.0)
    integrality = np.zeros(nvar)
    lb_v[:n0], ub_v[:n0] = lo0.double().numpy(), hi0.double().numpy()
    rows: list[np.ndarray] = []
    row_lo: list[float] = []
    row_hi: list[float] = []
    prev, start = slice(0, n0), n0
    for layer, (z_lo, z_hi) in zip(chain.layers[:-1], bounds, strict=True):
        w, b = layer.weight.numpy(), layer.bias.numpy()
        n = w.shape[0]
        h, a = slice(start, start + n), slice(start + n, start + 2 * n)
        integrality[a] = 1
        for j in range(n):
            lj, uj = float(z_lo[j]), float(z_hi[j])
            hj, aj = h.start + j, a.start + j
            ub_v[aj] = 1.0
            if uj <= 0:  # h = 0
                continue
            ub_v[hj] = uj
            row = np.zeros(nvar)
            row[prev] = -w[j]
            row[hj] = 1.0
            if lj >= 0:  # h = z
                rows.append(row)
                row_lo.append(float(b[j]))
                row_hi.append(float(b[j]))
                continue
            rows.append(row.copy())  # h - W h' >= b  (h >= z)
            row_lo.append(float(b[j]))
            row_hi.append(np.inf)
            row[aj] = -lj  # h - W h' - l a <= b - l  (h <= z - l (1 - a))
            rows.append(row.copy())
            row_lo.append(-np.inf)
            row_hi.append(float(b[j]) - lj)
            r2 = np.zeros(nvar)  # h - u a <= 0
            r2[hj], r2[aj] = 1.0, -uj
            rows.append(r2)
            row_lo.append(-np.inf)
            row_hi.append(0.0)
        prev, start = h, start + 2 * n
    t_index = nvar - 1
    lb_v[t_index], ub_v[t_index] = -np.inf, np.inf
    last = chain.layers[-1]
    out_w = spec.double().numpy() @ last.weight.numpy()
    out_b = spec.double().numpy() @ last.bias.numpy() - offset.double().numpy()
    cost = np.zeros(nvar)
    cost[t_index] = 1.0
    best, best_x, message = np.inf, None, ""
    for g in range(groups.shape[0]):
        g_rows, g_lo, g_hi = list(rows), list(row_lo), list(row_hi)
        for i in groups[g].nonzero().flatten().tolist():
            row = np.zeros(nvar)
            row[prev] = out_w[i]
            row[t_index] = -1.0
            g_rows.append(row)
            g_lo.append(-np.inf)
            g_hi.append(-float(out_b[i]))
        res = milp(
            cost,
            constraints=LinearConstraint(np.array(g_rows), np.array(g_lo), np.array(g_hi)),
            integrality=integrality,
            bounds=Bounds(lb_v, ub_v),
            options={"time_limit": time_limit, "mip_rel_gap": 0.0},
        )
        message = str(res.message)
        if res.x is None:
            return MILPResult(float("nan"), None, message)
        if res.fun < best:
            best, best_x = float(res.fun), torch.tensor(res.x[:n0])
    return MILPResult(best, best_x, message)


def leaf_lp(
    chain: Chain,
    lo0: Tensor,
    hi0: Tensor,
    lbs: list[Tensor],
    ubs: list[Tensor],
    spec: Tensor,
    offset: Tensor,
    group: Tensor,
) -> tuple[float, Tensor | None]:
    """min over one fully split domain of max_{i in group} (C_i f(h_0) - d_i), input-only chain.

    lo0, hi0: (n_0,); lbs, ubs: per ReLU layer (n_l,), every neuron stable (lb >= 0 or ub <= 0); group: (R,) bool.
    On the domain the activation pattern is fixed, so f is affine and the pattern's constraints are linear.

    Returns:
        (the minimum, a minimiser in h_0 coordinates); (+inf, None) when the domain is empty.
    """
    from scipy.optimize import linprog

    n0 = lo0.numel()
    m = torch.eye(n0, dtype=torch.float64)  # h_l = m h_0 + c
    c = torch.zeros(n0, dtype=torch.float64)
    a_ub: list[Tensor] = []
    b_ub: list[Tensor] = []
    for layer, lb in zip(chain.layers[:-1], lbs, strict=True):
        zm, zc = layer.weight @ m, layer.weight @ c + layer.bias
        active = lb >= 0
        # active: -z <= 0; inactive: z <= 0
        sgn = torch.where(active, -1.0, 1.0).to(torch.float64)
        a_ub.append(sgn[:, None] * zm)
        b_ub.append(-sgn * zc)
        keep = active.to(torch.float64)
        m, c = keep[:, None] * zm, keep * zc
    last = chain.layers[-1]
    om, oc = spec.double() @ (last.weight @ m), spec.double() @ (last.weight @ c + last.bias) - offset.double()
    idx = group.nonzero().flatten()
    # variables (h_0, t): rows C_i f - d_i - t <= 0
    split_rows = torch.cat(a_ub, 0) if a_ub else torch.zeros(0, n0, dtype=torch.float64)
    a_rows = torch.cat([split_rows, torch.zeros(split_rows.shape[0], 1, dtype=torch.float64)], 1)
    o_rows = torch.cat([om[idx], -torch.ones(idx.numel(), 1, dtype=torch.float64)], 1)
    a_all = torch.cat([a_rows, o_rows], 0).numpy()
    b_all = torch.cat([*b_ub, -oc[idx]]).numpy()
    cost = np.zeros(n0 + 1)
    cost[-1] = 1.0
    bnds = [(float(lo0[j]), float(hi0[j])) for j in range(n0)] + [(None, None)]
    res = linprog(cost, A_ub=a_all, b_ub=b_all, bounds=bnds, method="highs")
    if res.status == 2:  # infeasible: the splits leave no point
        return float("inf"), None
    if res.x is None:
        return float("-inf"), None
    return float(res.fun), torch.tensor(res.x[:n0])
