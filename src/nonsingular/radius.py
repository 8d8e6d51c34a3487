"""Robustness radius along a ray (eps_x, eps_w) = s (k_x, k_w), per example, by bisection (THEORY.md section 7).

The attacked radius is an upper bound (the smallest s where the attack found a verified error); the certified
radius a lower bound (the largest s a certificate proves). Their gap is what is honestly known.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .attacks import PGD
from .threat import ThreatModel
from .verify import verify

__all__ = ["RadiusResult", "Ray", "attacked_radius", "bisect", "certified_radius"]

#: predicate(index, s) -> bool mask over those examples: True where the property holds at s.
Predicate = Callable[[Tensor, float], Tensor]


@dataclass(frozen=True)
class Ray:
    """Direction of the ray: threat(s) has eps_x = s k_x and eps_w = s k_w, other settings from `base`."""

    k_x: float
    k_w: float
    base: ThreatModel = field(default_factory=ThreatModel)

    def __post_init__(self) -> None:
        if self.k_x < 0 or self.k_w < 0 or self.k_x + self.k_w == 0:
            raise ValueError(f"ray direction must be >= 0 and not zero, got k_x={self.k_x}, k_w={self.k_w}")

    def threat(self, s: float) -> ThreatModel:
        return self.base.model_copy(update={"eps_x": s * self.k_x, "eps_w": s * self.k_w})

    @property
    def s_max(self) -> float:
        """Largest s keeping eps_x within the domain's width."""
        width = self.base.domain[1] - self.base.domain[0]
        return width / self.k_x if self.k_x > 0 else float("inf")


@dataclass
class RadiusResult:
    """Per-example radii (N,); `censored` marks examples whose property still held at s_hi."""

    radius: Tensor
    censored: Tensor


def bisect(n: int, holds: Predicate, s_hi: float, iterations: int, want_first_true: bool) -> RadiusResult:
    """Per-example bisection on [0, s_hi], batching examples that test the same s.

    want_first_true: find the smallest s where `holds` is True (attacks: success); else the largest s where it is
    True (certificates), returning the end point of the interval that is known for sure.
    """
    lo = torch.zeros(n, dtype=torch.float64)
    hi = torch.full((n,), s_hi, dtype=torch.float64)
    everyone = torch.arange(n)
    at_hi = holds(everyone, s_hi).cpu()  # bookkeeping on the CPU whatever device the model runs on
    # Examples whose answer at s_hi already settles them are censored at the interval's end.
    censored = ~at_hi if want_first_true else at_hi
    active = ~censored
    for _ in range(iterations):
        mids = (lo + hi) / 2
        for s in torch.unique(mids[active]).tolist():
            idx = everyone[active & (mids == s)]
            result = holds(idx, s).cpu()
            if want_first_true:
                hi[idx[result]] = s
                lo[idx[~result]] = s
            else:
                lo[idx[result]] = s
                hi[idx[~result]] = s
    radius = hi if want_first_true else lo
    radius[censored] = s_hi
    return RadiusResult(radius=radius, censored=censored)


def attacked_radius(
    model: nn.Module, x: Tensor, y: Tensor, ray: Ray, attack: PGD, s_hi: float, iterations: int = 8
) -> RadiusResult:
    """Smallest s (to s_hi / 2**iterations) at which `attack` finds a verified error; s_hi if none was found.

    Misclassified clean examples have radius 0.
    """
    with torch.no_grad():
        wrong = (model(x).argmax(1) != y).cpu()

    def success(idx: Tensor, s: float) -> Tensor:
        if s == 0:
            return wrong[idx]
        result = attack(model, x[idx], y[idx], ray.threat(s))
        check = verify(model, x[idx], y[idx], result)
        if not check.passed:
            raise RuntimeError(f"attack result failed verification at s={s}: {check.problems}")
        return ~check.correct.cpu() | wrong[idx]

    out = bisect(len(y), success, s_hi, iterations, want_first_true=True)
    out.radius[wrong] = 0.0
    out.censored[wrong] = False
    return out


def certified_radius(
    x: Tensor,
    y: Tensor,
    ray: Ray,
    certify: Callable[[Tensor, Tensor, ThreatModel], Tensor],
    s_hi: float,
    iterations: int = 12,
) -> RadiusResult:
    """Largest s (to s_hi / 2**iterations) at which `certify(x, y, threat)` proves every margin positive."""

    def proved(idx: Tensor, s: float) -> Tensor:
        return certify(x[idx], y[idx], ray.threat(s))

    zero = proved(torch.arange(len(y)), 0.0).cpu()
    out = bisect(len(y), proved, s_hi, iterations, want_first_true=False)
    out.radius[~zero] = 0.0
    out.censored[~zero] = False
    return out
