"""Branch and bound over ReLU splits: the loop of the algorithm, on batched domain tensors.

bound the root (alpha-CROWN); while domains are open and time is left:
    pop the batch_domains worst domains (best-first on their lower bound)
    split each on its chosen neuron (z >= 0 / z <= 0): two children that inherit bounds and multipliers
    bound the children (beta-CROWN: slopes and split multipliers optimised together)
    drop the proven ones; settle fully split leaves by an LP (input-only threats)
    choose each child's next split from its bound's coefficients; push the rest
    now and then, attack from the relaxation minimisers of the worst children
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from .attack import Witness
from .bounding import (
    BoundResult,
    DomainBoxes,
    alpha_intermediate,
    crown_intermediate,
    optimise_bounds,
    refine_intermediate,
)
from .branching import Branching, relu_split_choice
from .domains import DomainStore, MemoryBudgetExceeded
from .milp import leaf_lp
from .result import BaBResult, BaBStatus
from .search import Search

__all__ = ["relu_search"]


def _fields(n_relu: int) -> list[str]:
    return [f"{k}{i}" for i in range(n_relu) for k in ("lb", "ub", "s", "alpha", "beta")]


def _bound(
    search: Search,
    lo0: Tensor,
    hi0: Tensor,
    rows: dict[str, Tensor],
    n_relu: int,
    steps: int,
    refine: bool = False,
) -> BoundResult:
    batch = rows["depth"].shape[0]
    boxes = DomainBoxes(
        lo0.expand(batch, -1),
        hi0.expand(batch, -1),
        [rows[f"lb{i}"] for i in range(n_relu)],
        [rows[f"ub{i}"] for i in range(n_relu)],
    )
    t0 = time.monotonic()
    if refine and search.options.refine_neurons > 0:
        refine_intermediate(
            search.chain,
            boxes,
            first=int(rows["layer"].clamp(min=0).min()) + 1,
            deadline=search.deadline,
            max_neurons=search.options.refine_neurons,
        )
        for i in range(n_relu):
            rows[f"lb{i}"], rows[f"ub{i}"] = boxes.lbs[i], boxes.ubs[i]
    # Rows proven on the parent stay proven on the child (its domain is a subset): skip rows proven on every
    # domain of the batch, and keep the parent's bound as a floor for the others.
    parent = rows.get("lower")
    r = search.spec.shape[0]
    active = torch.ones(r, dtype=torch.bool) if parent is None else ~(parent > 0).all(dim=0)
    idx = active.nonzero().flatten()
    groups = search.groups[:, idx]
    groups = groups[groups.any(dim=1)]
    res = optimise_bounds(
        search.chain,
        search.spec[idx],
        search.offset[idx],
        boxes,
        [rows[f"alpha{i}"][:, idx].to(torch.float64) for i in range(n_relu)],
        [rows[f"beta{i}"][:, idx].to(torch.float64) for i in range(n_relu)],
        [rows[f"s{i}"] for i in range(n_relu)],
        steps=steps,
        lr_alpha=search.options.lr_alpha,
        lr_beta=search.options.lr_beta,
        deadline=search.deadline,
        groups=groups,
        work_chain=search.work_chain,
    )
    if res.timed_out:
        pass  # the caller discards the batch
    elif parent is not None and not bool(active.all()):
        lower = parent.clone()
        lower[:, idx] = torch.maximum(parent[:, idx], res.lower)
        alphas = [rows[f"alpha{i}"].to(torch.float64) for i in range(n_relu)]
        betas = [rows[f"beta{i}"].to(torch.float64) for i in range(n_relu)]
        coefs = [torch.zeros_like(a) for a in alphas]
        for full, part in zip(alphas + betas + coefs, res.alphas + res.betas + res.coefs, strict=True):
            full[:, idx] = part
        a0 = res.a0.new_zeros(batch, r, res.a0.shape[2])
        a0[:, idx] = res.a0
        res = BoundResult(lower, alphas, betas, coefs, a0, res.timed_out)
    elif parent is not None:
        res.lower = torch.maximum(parent, res.lower)
    search.stats.time_bounding += time.monotonic() - t0
    search.stats.domains_visited += batch
    return res


def _children(rows: dict[str, Tensor], n_relu: int) -> dict[str, Tensor]:
    """Two children per row: split on (layer, neuron), first half z >= 0, second half z <= 0."""
    k = rows["depth"].shape[0]
    out = {name: torch.cat([v, v], dim=0) for name, v in rows.items()}
    out["depth"] = out["depth"] + 1
    for i in range(n_relu):
        idx = (rows["layer"] == i).nonzero().flatten()
        if idx.numel() == 0:
            continue
        neuron = rows["neuron"][idx]
        lb, ub, sign = out[f"lb{i}"], out[f"ub{i}"], out[f"s{i}"]
        lb[idx, neuron] = lb[idx, neuron].clamp(min=0)
        sign[idx, neuron] = 1
        ub[idx + k, neuron] = ub[idx + k, neuron].clamp(max=0)
        sign[idx + k, neuron] = -1
    return out


def _settle_leaves(
    search: Search, lo0: Tensor, hi0: Tensor, rows: dict[str, Tensor], n_relu: int, leaf: Tensor
) -> tuple[Tensor, Witness | None, bool]:
    """Decide fully split domains.

    Returns:
        (mask of leaves proven, a checked witness or None, whether every leaf was examined: False when the
        deadline stopped it, and then the unexamined leaves are neither proven nor undecided).
    """
    proven = torch.zeros_like(leaf)
    if search.chain.perturbs_weights:
        search.undecided_leaves += int(leaf.sum())  # W'h stays relaxed: no exact leaf under a weight threat
        return proven, None, True
    tol = search.options.leaf_tolerance
    for b in leaf.nonzero().flatten().tolist():
        search.stats.leaves += 1
        values = []
        for g in range(search.groups.shape[0]):
            if search.out_of_time():
                return proven, None, False
            value, point = leaf_lp(
                search.chain,
                lo0[0],
                hi0[0],
                [rows[f"lb{i}"][b] for i in range(n_relu)],
                [rows[f"ub{i}"][b] for i in range(n_relu)],
                search.spec,
                search.offset,
                search.groups[g],
            )
            values.append(value)
            if value <= 0 and point is not None:
                x = _h0_to_x(search, point)
                found = search.attack(x[None], steps=0)
                if found is not None:
                    return proven, found, True
        if min(values) > max(tol, search.options.proof_margin):
            proven[b] = True
        else:
            search.undecided_leaves += 1
    return proven, None, True


def _h0_to_x(search: Search, h0: Tensor) -> Tensor:
    """Invert the element-wise increasing input map by bisection on each coordinate (no formula needed)."""
    lo, hi = search.lo_x.clone(), search.hi_x.clone()
    shape = (1, *search.chain.input_shape)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = search.chain.h0(mid.reshape(shape))[0] < h0
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def relu_search(search: Search) -> BaBResult:
    """Run the ReLU-split search on `search`'s problem (the attack before it has already run)."""
    chain, opts = search.chain, search.options
    shape = (1, *chain.input_shape)
    lo0, hi0 = chain.h0(search.lower.reshape(shape)), chain.h0(search.upper.reshape(shape))
    root = crown_intermediate(chain, lo0, hi0)
    n_relu, r = len(chain.widths), search.spec.shape[0]
    rows: dict[str, Tensor] = {"depth": torch.zeros(1, dtype=torch.int64)}
    for i in range(n_relu):
        lb, ub = root.lbs[i], root.ubs[i]
        rows[f"lb{i}"], rows[f"ub{i}"] = lb, ub
        rows[f"s{i}"] = torch.zeros_like(lb, dtype=torch.int8)
        rows[f"alpha{i}"] = (ub > -lb).to(torch.float64)[:, None, :].expand(1, r, -1).clone()
        rows[f"beta{i}"] = torch.zeros(1, r, lb.shape[1], dtype=torch.float64)
    res = _bound(search, lo0, hi0, rows, n_relu, opts.root_steps)
    score = search.score(res.lower)
    search.stats.root_lower_bound = float(score[0])
    search.report(1, float(score[0]))
    closed_min = float("inf")
    if float(score[0]) > opts.proof_margin:
        search.stats.domains_verified = 1
        search.stats.global_lower_bound = float(score[0])
        return search.finish(BaBStatus.UNSAT, "the root bound proves every disjunct empty")
    if search.out_of_time():
        search.stats.global_lower_bound = float(score[0])
        return search.finish(BaBStatus.TIMEOUT, "time ran out while bounding the root")
    found = search.attack(search.minimisers(res.a0, res.lower, search.lo_x, search.hi_x), opts.attack_steps)
    if found is not None:
        return search.finish(BaBStatus.SAT, "a counterexample from the root's relaxation minimiser", found)
    if opts.root_intermediate_steps > 0 and n_relu > 1:
        # Worth its cost only now that the cheap root bound and the attacks have failed: every domain of the
        # search inherits these intermediate bounds.
        t0 = time.monotonic()
        alpha_intermediate(
            chain,
            root,
            steps=opts.root_intermediate_steps,
            lr_alpha=opts.lr_alpha,
            deadline=search.deadline,
            work_chain=search.work_chain,
        )
        search.stats.time_bounding += time.monotonic() - t0
        for i in range(n_relu):
            rows[f"lb{i}"], rows[f"ub{i}"] = root.lbs[i], root.ubs[i]
            rows[f"alpha{i}"] = res.alphas[i]
        rows["lower"] = res.lower  # the first root bound stays a valid floor
        res = _bound(search, lo0, hi0, rows, n_relu, opts.root_steps)
        score = search.score(res.lower)
        search.stats.root_lower_bound = max(search.stats.root_lower_bound, float(score[0]))
        if float(score[0]) > opts.proof_margin:
            search.stats.domains_verified = 1
            search.stats.global_lower_bound = float(score[0])
            return search.finish(BaBStatus.UNSAT, "the root bound (alpha-CROWN intermediate bounds) proves it")
        if search.out_of_time():
            return search.finish(BaBStatus.TIMEOUT, "time ran out while bounding the root")
    # Multipliers are stored in float32 (any value in their range is sound); bounds stay float64.
    template = {
        name: rows[name][0].to(torch.float32 if name.startswith(("alpha", "beta")) else rows[name].dtype)
        for name in _fields(n_relu)
    }
    template.update(depth=rows["depth"][0], layer=torch.zeros((), dtype=torch.int64))
    template.update(neuron=torch.zeros((), dtype=torch.int64), lower=res.lower[0])
    store = DomainStore(template, search.memory_mb)
    pending = (rows, res)
    while True:
        parents, bound = pending
        t0 = time.monotonic()
        new = {
            name: parents[name] for name in ["depth", *[f"{k}{i}" for i in range(n_relu) for k in ("lb", "ub", "s")]]
        }
        for i in range(n_relu):
            new[f"alpha{i}"], new[f"beta{i}"] = bound.alphas[i], bound.betas[i]
        new["lower"] = bound.lower
        score = search.score(bound.lower)
        proven = score > opts.proof_margin
        if proven.any():
            closed_min = min(closed_min, float(score[proven].min()))
        layer, neuron = relu_split_choice(
            Branching(opts.branching),
            [new[f"lb{i}"] for i in range(n_relu)],
            [new[f"ub{i}"] for i in range(n_relu)],
            [new[f"s{i}"] for i in range(n_relu)],
            bound.coefs,
            bound.alphas,
            search.row_weight(bound.lower),
        )
        new["layer"], new["neuron"] = layer, neuron
        search.stats.time_branching += time.monotonic() - t0
        leaf = (~proven) & (layer < 0)
        if leaf.any():
            leaf_proven, found, examined = _settle_leaves(search, lo0, hi0, new, n_relu, leaf)
            if found is not None:
                return search.finish(BaBStatus.SAT, "a counterexample from a leaf LP", found)
            if not examined:  # never drop a leaf nobody decided: that would be an unsound unsat
                search.stats.global_lower_bound = min(store.min_score(), float(score.min()))
                return search.finish(BaBStatus.TIMEOUT, "time ran out while solving leaf LPs")
            proven = proven | leaf_proven
        search.stats.domains_verified += int(proven.sum())
        keep = ~(proven | leaf)
        try:
            store.push({name: v[keep] for name, v in new.items()}, score[keep])
        except MemoryBudgetExceeded as err:
            search.stats.global_lower_bound = min(store.min_score(), float(score.min()))
            return search.finish(BaBStatus.UNKNOWN, str(err))
        if int(new["depth"].max()) > search.stats.max_depth:
            search.stats.max_depth = int(new["depth"].max())
        search.stats.iterations += 1
        if opts.attack_every and search.stats.iterations % opts.attack_every == 0 and keep.any():
            worst = torch.argsort(score.masked_fill(~keep, torch.inf))[: min(8, int(keep.sum()))]
            starts = search.minimisers(bound.a0[worst], bound.lower[worst], search.lo_x, search.hi_x)
            found = search.attack(starts, opts.attack_steps // 2)
            if found is not None:
                return search.finish(BaBStatus.SAT, "a counterexample from a domain's relaxation minimiser", found)
        search.report(len(store), min(store.min_score(), closed_min))
        if len(store) == 0:
            search.stats.global_lower_bound = closed_min
            if search.undecided_leaves:
                return search.finish(BaBStatus.UNKNOWN, f"{search.undecided_leaves} fully split domains undecided")
            return search.finish(BaBStatus.UNSAT, "every domain proven")
        if search.out_of_time():
            return search.finish(BaBStatus.TIMEOUT, f"time ran out with {len(store)} domains open")
        popped, _ = store.pop_worst(search.batch_domains)
        children = _children(popped, n_relu)
        for i in range(n_relu):
            children[f"alpha{i}"] = children[f"alpha{i}"].to(torch.float64)
            children[f"beta{i}"] = children[f"beta{i}"].to(torch.float64)
        bound = _bound(search, lo0, hi0, children, n_relu, opts.steps, refine=True)
        if bound.timed_out or search.out_of_time():
            store.push(popped, search.score(popped["lower"]))
            search.stats.global_lower_bound = store.min_score()
            return search.finish(BaBStatus.TIMEOUT, f"time ran out with {len(store)} domains open")
        pending = (children, bound)
