"""A study's grid cells: the record of one evaluated cell, the weight parametrizations' axes, and the nesting
carry that lets a checked result of a smaller threat set count in every set that contains it."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from torch import Tensor

from ..evaluation import Cell
from ..threat import EpsMode, Scope, WeightBall
from .schema import StudyConfig

__all__ = ["Axes", "GridCell", "carry", "cell_fields", "extra_axes", "main_axes", "misses", "with_robust"]


@dataclass(frozen=True)
class Axes:
    """One weight parametrization's grid: its ball and mode, the eps_x and eps_w axes, and the tag of its state
    keys ("" for the main grid, "ball mode" for a [[grid.parametrizations]] entry)."""

    ball: WeightBall
    mode: EpsMode
    eps_x: list[float]
    eps_w: list[float]
    tag: str = ""

    @property
    def points(self) -> list[tuple[float, float]]:
        return [(ex, ew) for ex in self.eps_x for ew in self.eps_w if ex > 0 or ew > 0]


def main_axes(config: StudyConfig) -> Axes:
    g = config.grid
    return Axes(g.weight_ball, g.weight_mode, list(g.eps_x), list(g.eps_w))


def extra_axes(config: StudyConfig) -> list[Axes]:
    """The [[grid.parametrizations]]: eps_x in {0, headline eps_x} (the weight-only and joint cells the claims
    use) x the parametrization's own eps_w."""
    xs = sorted({0.0, config.headline.eps_x})
    return [Axes(p.weight_ball, p.weight_mode, xs, list(p.eps_w), p.label) for p in config.grid.parametrizations]


@dataclass
class GridCell:
    """One evaluated grid cell of one model and seed, as the study records it.

    Attributes:
        seed: the training and attack seed.
        eps_x, eps_w, scope: the cell.
        cell: the evaluated cell (evaluate.Cell) after the nesting carry: its accuracy and robust examples
            include checked results carried from smaller threat sets and the margin restart.
        own_accuracy: the accuracy of this cell's own first attack, before any carry or restart.
        carried: examples (per-example scope; the shared scope: 1 when a smaller cell's perturbation was kept)
            that only a smaller cell's checked result broke.
        margin_restart: a margin-loss restart ran (the cross-entropy attack missed examples a smaller set broke).
    """

    seed: int
    eps_x: float
    eps_w: float
    scope: str
    cell: Cell
    own_accuracy: float | None
    carried: int = 0
    margin_restart: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "cell"},
            "cell": self.cell.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GridCell:
        """Raises: ValueError: not a grid cell record."""
        if set(data) != {f.name for f in fields(cls)}:
            raise ValueError(f"not a study grid cell: keys {sorted(data)}")
        return cls(**{**data, "cell": Cell.from_json(data["cell"])})

    def row(self) -> dict[str, Any]:
        """The fields results.json keeps per grid cell."""
        return {
            "seed": self.seed,
            "eps_x": self.eps_x,
            "eps_w": self.eps_w,
            "scope": self.scope,
            "accuracy": self.cell.accuracy,
            "checked": self.cell.checked,
            "paths": self.cell.paths,
            "own_accuracy": self.own_accuracy,
            "carried": self.carried,
            "margin_restart": self.margin_restart,
        }


def cell_fields(cell: Cell) -> dict[str, Any]:
    return {"accuracy": cell.accuracy, "checked": cell.checked}


def with_robust(cell: Cell, robust: Tensor) -> Cell:
    return replace(cell, robust=robust, accuracy=float(robust.float().mean()))


def misses(cell: Cell, smaller: list[Cell]) -> bool:
    """Whether a smaller cell's checked attack broke an example this cell's attack left standing."""
    return cell.robust is not None and any(
        bool((cell.robust & ~other.robust.to(cell.robust.device)).any()) for other in smaller
    )


def carry(cell: Cell, smaller: list[Cell], scope: Scope) -> tuple[Cell, int]:
    """`cell` with the checked results of the nested `smaller` cells carried in; (cell, carried count)."""
    if not smaller or cell.robust is None or not cell.checked:
        return cell, 0
    if scope is Scope.SHARED:  # one perturbation for all: keep the one with the lowest accuracy
        worst = min(smaller, key=lambda c: float(c.robust.float().mean()))
        if float(worst.robust.float().mean()) < float(cell.robust.float().mean()):
            return with_robust(cell, worst.robust.to(cell.robust.device).clone()), 1
        return cell, 0
    robust = cell.robust.clone()
    for other in smaller:
        robust &= other.robust.to(robust.device)
    carried = int((cell.robust & ~robust).sum())
    return (with_robust(cell, robust), carried) if carried else (cell, 0)
