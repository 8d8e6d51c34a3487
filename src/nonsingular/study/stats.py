"""Per-model numbers of a study's results across seeds: the runs, and the mean and spread of a cell or a certificate
(shared by the report's tables and the plots)."""

from __future__ import annotations

from collections.abc import Sequence

from ..formatting import percent, points
from .records import ModelResult, SeedRun
from .verdicts import mean_sd, seed_values

__all__ = ["Stat", "cell_stat", "certified_stat", "runs"]


def runs(model: ModelResult) -> list[SeedRun]:
    """The model's per-seed runs, in seed order."""
    return model.runs


def cell_stat(model: ModelResult, eps_x: float, eps_w: float, scope: str = "per-example") -> Stat:
    """Mean and spread over seeds of the checked accuracy at one cell (None where a seed failed the check)."""
    values = list(seed_values(model, eps_x, eps_w, scope).values())
    return Stat.of(values)


def certified_stat(model: ModelResult, eps_x: float, eps_w: float) -> tuple[Stat, str | None]:
    """The best method's certified accuracy at (eps_x, eps_w), mean over seeds."""
    by_method: dict[str, list[float]] = {}
    for c in model.certified:
        if c["eps_x"] == eps_x and c["eps_w"] == eps_w:
            by_method.setdefault(c["method"], []).append(c["certified_accuracy"])
    if not by_method:
        return Stat.of([]), None
    method = max(by_method, key=lambda m: mean_sd(by_method[m])[0])
    return Stat.of(by_method[method]), method


class Stat:
    """Mean and standard deviation over seeds of one quantity (mean None when no seed has a value)."""

    def __init__(self, mean: float | None, sd: float | None, n: int) -> None:
        self.mean, self.sd, self.n = mean, sd, n

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        known = [float(v) for v in values if v is not None]
        if not values or len(known) < len(values):
            return cls(None, None, len(values))
        mean, sd = mean_sd(known)
        return cls(mean, sd, len(values))

    def text(self, compact: bool = False) -> str:
        """ "97.5% ± 0.7" (percent, sd in points); compact: "97.5±0.7" for narrow terminals."""
        if self.mean is None:
            return "-"
        if compact:
            return points(self.mean, ".1f") + ("%" if self.sd is None else "±" + points(self.sd, ".1f"))
        return percent(self.mean) + ("" if self.sd is None else " ± " + points(self.sd, ".1f"))
