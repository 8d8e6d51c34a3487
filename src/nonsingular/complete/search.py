"""What both searches (ReLU splits, input bisection) share: the problem, the clock, scoring, attacks, progress."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .attack import Witness, check_witness, pgd_falsify
from .chain import Chain
from .result import BaBOptions, BaBResult, BaBStats, BaBStatus, Progress, ProgressCallback

__all__ = ["Search"]


@dataclass
class Search:
    """One search's problem and bookkeeping.

    Attributes:
        lower, upper: (*input_shape) float64 box; lo_x, hi_x: the same flattened (n,).
        spec, offset: (R, K), (R,) float64; groups: (G, R) bool, the rows of each disjunct.
    """

    model: nn.Module
    chain: Chain
    lower: Tensor
    upper: Tensor
    spec: Tensor
    offset: Tensor
    groups: Tensor
    options: BaBOptions
    deadline: float
    generator: torch.Generator
    progress: ProgressCallback | None
    batch_domains: int
    memory_mb: float
    work_chain: Chain | None = None
    stats: BaBStats = field(default_factory=BaBStats)
    start: float = field(default_factory=time.monotonic)
    undecided_leaves: int = 0

    @property
    def lo_x(self) -> Tensor:
        return self.lower.flatten()

    @property
    def hi_x(self) -> Tensor:
        return self.upper.flatten()

    def out_of_time(self) -> bool:
        return time.monotonic() >= self.deadline

    def group_max(self, lower: Tensor) -> Tensor:
        """(B, G): per disjunct, the best (largest) row lower bound; NaN counts as -inf (never proves)."""
        lower = torch.nan_to_num(lower, nan=-torch.inf)
        masked = torch.where(self.groups[None], lower[:, None, :], torch.full_like(lower[:, None, :], -torch.inf))
        return masked.amax(dim=-1)

    def score(self, lower: Tensor) -> Tensor:
        """(B,) lower bound of v over each domain: > 0 proves the domain (every disjunct has a positive row)."""
        return self.group_max(lower).amin(dim=-1)

    def row_weight(self, lower: Tensor) -> Tensor:
        """(B, R): 1 on the best row of each disjunct not yet proven on the domain (the rows worth improving)."""
        lower = torch.nan_to_num(lower, nan=-torch.inf)
        masked = torch.where(self.groups[None], lower[:, None, :], torch.full_like(lower[:, None, :], -torch.inf))
        best_row = masked.argmax(dim=-1)  # (B, G)
        open_group = (masked.amax(dim=-1) <= 0).to(lower.dtype)
        weight = torch.zeros_like(lower)
        weight.scatter_add_(1, best_row, open_group)
        return weight.clamp(max=1)

    def minimisers(self, a0: Tensor, lower: Tensor, lo_x: Tensor, hi_x: Tensor) -> Tensor:
        """(B, n) the relaxation's minimiser of each domain's weakest open row, in input coordinates.

        The input map is element-wise increasing, so the sign of a0 (on h_0) picks the same end of x's box.
        lo_x, hi_x: (B, n) or (n,).
        """
        weight = self.row_weight(lower)
        masked = torch.where(weight > 0, lower, torch.full_like(lower, torch.inf))
        row = masked.argmin(dim=1)
        a = a0[torch.arange(a0.shape[0]), row]
        mid = (lo_x + hi_x) / 2
        return torch.where(a > 0, lo_x, torch.where(a < 0, hi_x, mid))

    def attack(self, starts: Tensor, steps: int) -> Witness | None:
        """PGD from `starts` (S, n); the first candidate (lowest value first) that the model confirms, or None."""
        t0 = time.monotonic()
        try:
            x, t, v = pgd_falsify(
                self.chain,
                self.lo_x,
                self.hi_x,
                self.spec,
                self.offset,
                self.groups,
                starts,
                steps=steps,
                generator=self.generator,
                deadline=self.deadline,
            )
            for i in torch.argsort(v).tolist()[:8]:
                if float(v[i]) > 0:
                    break
                ti = None if t is None else [layer_t[i] for layer_t in t]
                found = check_witness(
                    self.model,
                    self.chain,
                    x[i],
                    ti,
                    self.lower,
                    self.upper,
                    self.spec,
                    self.offset,
                    self.groups,
                )
                if found is not None:
                    return found
            return None
        finally:
            self.stats.time_attack += time.monotonic() - t0

    def random_starts(self, count: int) -> Tensor:
        """(count, n): the box's centre and count - 1 uniform points."""
        u = torch.rand(max(count - 1, 0), self.lo_x.numel(), generator=self.generator, dtype=torch.float64)
        centre = ((self.lo_x + self.hi_x) / 2)[None]
        return torch.cat([centre, self.lo_x + u * (self.hi_x - self.lo_x)], dim=0)

    def report(self, open_domains: int, global_lower: float) -> None:
        self.stats.global_lower_bound = global_lower
        self.stats.store_peak = max(self.stats.store_peak, open_domains)
        if self.progress is not None:
            left = max(self.deadline - time.monotonic(), 0.0)
            self.progress(Progress(self.stats.domains_visited, open_domains, global_lower, left))

    def finish(self, status: BaBStatus, reason: str, witness: Witness | None = None, mode: str = "relu") -> BaBResult:
        self.stats.time_total = time.monotonic() - self.start
        if status is BaBStatus.UNSAT:
            self.stats.global_lower_bound = max(self.stats.global_lower_bound, 0.0)
        return BaBResult(status=status, witness=witness, stats=self.stats, reason=reason, mode=mode)
