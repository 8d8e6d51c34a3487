"""Branch and bound by bisecting the input box, for inputs of few dimensions (ACAS Xu-like).

With a handful of inputs, halving the box tightens every intermediate bound at once, which ReLU splits cannot:
each box is bounded from scratch (CROWN intermediate bounds, alpha-CROWN on the property's rows) and the
dimension whose width moves the linear bound most is bisected.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from .bounding import BoundResult, crown_intermediate, optimise_bounds
from .branching import input_split_choice
from .domains import DomainStore, MemoryBudgetExceeded
from .result import BaBResult, BaBStatus
from .search import Search

__all__ = ["input_search"]


def _bound(search: Search, lo: Tensor, hi: Tensor, steps: int) -> tuple[BoundResult, Tensor, Tensor]:
    """Bound boxes (B, n) in input coordinates; returns the result and the boxes in h_0 coordinates."""
    t0 = time.monotonic()
    shape = (lo.shape[0], *search.chain.input_shape)
    lo0, hi0 = search.chain.h0(lo.reshape(shape)), search.chain.h0(hi.reshape(shape))
    boxes = crown_intermediate(search.chain, lo0, hi0)
    r = search.spec.shape[0]
    alphas = [
        (ub > -lb).to(torch.float64)[:, None, :].expand(-1, r, -1).clone()
        for lb, ub in zip(boxes.lbs, boxes.ubs, strict=True)
    ]
    betas = [torch.zeros_like(a) for a in alphas]
    signs = [torch.zeros_like(lb, dtype=torch.int8) for lb in boxes.lbs]
    res = optimise_bounds(
        search.chain,
        search.spec,
        search.offset,
        boxes,
        alphas,
        betas,
        signs,
        steps=steps,
        lr_alpha=search.options.lr_alpha,
        deadline=search.deadline,
        groups=search.groups,
        work_chain=search.work_chain,
    )
    search.stats.time_bounding += time.monotonic() - t0
    search.stats.domains_visited += lo.shape[0]
    return res, lo0, hi0


def input_search(search: Search) -> BaBResult:
    """Run the input-bisection search on `search`'s problem (the attack before it has already run)."""
    opts = search.options
    lo, hi = search.lo_x[None].clone(), search.hi_x[None].clone()
    depth = torch.zeros(1, dtype=torch.int64)
    res, lo0, hi0 = _bound(search, lo, hi, opts.root_steps)
    search.stats.root_lower_bound = float(search.score(res.lower)[0])
    if res.timed_out:
        return search.finish(BaBStatus.TIMEOUT, "time ran out while bounding the root", mode="input")
    template = {"lo": lo[0], "hi": hi[0], "depth": depth[0], "dim": torch.zeros((), dtype=torch.int64)}
    store = DomainStore(template, search.memory_mb)
    closed_min = float("inf")
    while True:
        t0 = time.monotonic()
        score = search.score(res.lower)
        proven = score > opts.proof_margin
        if proven.any():
            closed_min = min(closed_min, float(score[proven].min()))
        dim = input_split_choice(lo0, hi0, res.a0, search.row_weight(res.lower))
        # A box too thin to halve in float64 (or a point) cannot be split further.
        width = (hi - lo).gather(1, dim[:, None])[:, 0]
        scale = torch.maximum(lo.abs(), hi.abs()).gather(1, dim[:, None])[:, 0]
        leaf = (~proven) & (width <= 1e-12 * (1 + scale))
        search.undecided_leaves += int(leaf.sum())
        search.stats.leaves += int(leaf.sum())
        search.stats.time_branching += time.monotonic() - t0
        search.stats.domains_verified += int(proven.sum())
        keep = ~(proven | leaf)
        try:
            store.push({"lo": lo[keep], "hi": hi[keep], "depth": depth[keep], "dim": dim[keep]}, score[keep])
        except MemoryBudgetExceeded as err:
            search.stats.global_lower_bound = min(store.min_score(), float(score.min()))
            return search.finish(BaBStatus.UNKNOWN, str(err), mode="input")
        search.stats.max_depth = max(search.stats.max_depth, int(depth.max()))
        search.stats.iterations += 1
        if opts.attack_every and search.stats.iterations % opts.attack_every == 0 and keep.any():
            worst = torch.argsort(score.masked_fill(~keep, torch.inf))[: min(8, int(keep.sum()))]
            starts = search.minimisers(res.a0[worst], res.lower[worst], lo[worst], hi[worst])
            found = search.attack(starts, opts.attack_steps // 2)
            if found is not None:
                return search.finish(
                    BaBStatus.SAT, "a counterexample from a box's relaxation minimiser", found, "input"
                )
        search.report(len(store), min(store.min_score(), closed_min))
        if len(store) == 0:
            search.stats.global_lower_bound = closed_min
            if search.undecided_leaves:
                return search.finish(
                    BaBStatus.UNKNOWN, f"{search.undecided_leaves} point boxes undecided", mode="input"
                )
            return search.finish(BaBStatus.UNSAT, "every box proven", mode="input")
        if search.out_of_time():
            return search.finish(BaBStatus.TIMEOUT, f"time ran out with {len(store)} boxes open", mode="input")
        popped, popped_score = store.pop_worst(search.batch_domains)
        k = popped_score.shape[0]
        rows = torch.arange(k)
        d = popped["dim"]
        mid = (popped["lo"][rows, d] + popped["hi"][rows, d]) / 2
        lo, hi = torch.cat([popped["lo"], popped["lo"]]), torch.cat([popped["hi"], popped["hi"]])
        hi[rows, d] = mid
        lo[rows + k, d] = mid
        depth = torch.cat([popped["depth"], popped["depth"]]) + 1
        res, lo0, hi0 = _bound(search, lo, hi, opts.steps)
        if res.timed_out or search.out_of_time():
            store.push(popped, popped_score)
            search.stats.global_lower_bound = store.min_score()
            return search.finish(BaBStatus.TIMEOUT, f"time ran out with {len(store)} boxes open", mode="input")
