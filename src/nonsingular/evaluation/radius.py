"""Robustness radius along a ray (eps_x, eps_w) = s (k_x, k_w), per example, by bisection (THEORY.md section 7).

The attacked radius is an upper bound (the smallest s where the attack found a checked error); the certified
radius a lower bound (the largest s a certificate proves). Their gap is what is honestly known.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from ..attacks import Attack
from ..check import check_attack
from ..errors import require_finite
from ..threat import ThreatModel

__all__ = [
    "RadiusReport",
    "RadiusResult",
    "RadiusSettings",
    "Ray",
    "attacked_radius",
    "bisect",
    "certified_radius",
    "measure_radii",
]


class RadiusSettings(BaseModel):
    """The ray and the search, validated before any work (the CLI's `radius` options and the study's [radius]).

    Attributes:
        k_x: eps_x per unit of s (data units).
        k_w: eps_w per unit of s (weight units, or a fraction of the weights in relative mode).
        k_b: eps_b per unit of s (same mode as the weights; 0 leaves biases alone).
        s_max: largest s searched (> 0); radii beyond it are censored.
        n_examples: the first N test examples.
        iterations: bisection steps: resolution s_max / 2**iterations.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    k_x: float = Field(1.0, ge=0)
    k_w: float = Field(0.04, ge=0)
    k_b: float = Field(0.0, ge=0)
    s_max: float = Field(0.2, gt=0)
    n_examples: int = Field(100, ge=1)
    iterations: int = Field(8, ge=1, le=30)

    @model_validator(mode="after")
    def _direction(self) -> RadiusSettings:
        if self.k_x == 0 and self.k_w == 0 and self.k_b == 0:
            raise ValueError("ray direction must not be zero: give k_x, k_w or k_b > 0")
        return self


#: predicate(index, s) -> bool mask over those examples: True where the property holds at s.
Predicate = Callable[[Tensor, float], Tensor]


@dataclass(frozen=True)
class Ray:
    """Direction of the ray: threat(s) has eps_x = s k_x and eps_w = s k_w, other settings from `base`."""

    k_x: float
    k_w: float
    base: ThreatModel = field(default_factory=ThreatModel)
    k_b: float = 0.0

    def __post_init__(self) -> None:
        ks = (self.k_x, self.k_w, self.k_b)
        if not all(math.isfinite(k) and k >= 0 for k in ks) or sum(ks) == 0:
            raise ValueError(
                f"ray direction must be finite, >= 0 and not zero, got k_x={self.k_x}, k_w={self.k_w}, k_b={self.k_b}"
            )

    def threat(self, s: float) -> ThreatModel:
        """The threat at s: eps_x = s k_x, eps_w = s k_w, eps_b = s k_b.

        A base with per-channel radii r_c (a quantization grid) is scaled as a whole instead: every weight radius
        of the base (r_c, layer_eps, eps_w) times s k_w, so k_w counts multiples of the grid's own radii and
        s k_w = 1 is the grid itself.
        """
        if not self.base.channel_eps:
            return self.base.model_copy(update={"eps_x": s * self.k_x, "eps_w": s * self.k_w, "eps_b": s * self.k_b})
        return self.base.scaled(s * self.k_w).model_copy(update={"eps_x": s * self.k_x, "eps_b": s * self.k_b})

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
    model: nn.Module, x: Tensor, y: Tensor, ray: Ray, attack: Attack, s_hi: float, iterations: int = 8
) -> RadiusResult:
    """Smallest s (to s_hi / 2**iterations) at which `attack` finds a checked error; s_hi if none was found.

    Misclassified clean examples have radius 0.
    """
    with torch.no_grad():
        wrong = (model(x).argmax(1) != y).cpu()

    def success(idx: Tensor, s: float) -> Tensor:
        if s == 0:
            return wrong[idx]
        result = attack(model, x[idx], y[idx], ray.threat(s))
        check = check_attack(model, x[idx], y[idx], result)
        if not check.passed:
            raise RuntimeError(f"attack result failed the check at s={s}: {check.problems}")
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


QUANTILES = {"min": 0.0, "25%": 0.25, "median": 0.5, "75%": 0.75, "max": 1.0}


@dataclass
class RadiusReport:
    """Attacked (upper) and certified (lower) radii of each example along one ray."""

    ray: Ray
    s_max: float
    method: str
    attack: str
    attacked: RadiusResult
    certified: RadiusResult
    seconds: float

    @property
    def consistent(self) -> bool:
        """Every certified radius is at most the attacked one (a certificate above an attack would be a bug)."""
        return bool((self.certified.radius <= self.attacked.radius + 1e-12).all())

    def quantiles(self, which: str) -> dict[str, float]:
        """min, quartiles and max of the attacked or certified radii, each checked finite."""
        radius = (self.attacked if which == "attacked" else self.certified).radius
        qs = torch.quantile(radius, torch.tensor(list(QUANTILES.values()), dtype=torch.float64)).tolist()
        return {name: require_finite(q, f"{which} radius {name}") for name, q in zip(QUANTILES, qs, strict=True)}

    def to_json(self) -> dict[str, Any]:
        return {
            "k_x": self.ray.k_x,
            "k_w": self.ray.k_w,
            "k_b": self.ray.k_b,
            "s_max": self.s_max,
            "method": self.method,
            "attack": self.attack,
            "threat": self.ray.base.describe(),
            "attacked": self.attacked.radius.tolist(),
            "certified": self.certified.radius.tolist(),
            "attacked_censored": self.attacked.censored.tolist(),
            "certified_censored": self.certified.censored.tolist(),
            "quantiles": {"attacked": self.quantiles("attacked"), "certified": self.quantiles("certified")},
            "consistent": self.consistent,
            "seconds": self.seconds,
        }


def measure_radii(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    ray: Ray,
    attack: Attack,
    certify: Callable[[Tensor, Tensor, ThreatModel], Tensor],
    method: str,
    s_max: float,
    iterations: int,
    progress: Callable[[int, int, str], None] | None = None,
) -> RadiusReport:
    """Both radii of every example along `ray`, searched on [0, min(s_max, ray.s_max)].

    Args:
        certify: certify(x, y, threat) -> (N,) bool, True where every margin is proved positive.
        method: the certificate's name, for the report.
        progress: progress(done, total, label) after each of the two searches.
    """
    t0 = time.perf_counter()
    s_hi = min(s_max, ray.s_max)
    upper = attacked_radius(model, x, y, ray, attack, s_hi, iterations)
    if progress is not None:
        progress(1, 2, "certified radius")
    lower = certified_radius(x, y, ray, certify, s_hi, iterations)
    if progress is not None:
        progress(2, 2, "done")
    return RadiusReport(ray, s_hi, method, repr(attack), upper, lower, time.perf_counter() - t0)
