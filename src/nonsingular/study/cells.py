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


def _masks(cells: list[Cell]) -> list[Tensor]:
    """The robust-example masks of `cells` (the nesting helpers receive checked cells, which all have one)."""
    return [c.robust for c in cells if c.robust is not None]


def misses(cell: Cell, smaller: list[Cell]) -> bool:
    """Whether a smaller cell's checked attack broke an example this cell's attack left standing."""
    own = cell.robust
    return own is not None and any(bool((own & ~m.to(own.device)).any()) for m in _masks(smaller))


def carry(cell: Cell, smaller: list[Cell], scope: Scope) -> tuple[Cell, int]:
    """`cell` with the checked results of the nested `smaller` cells carried in; (cell, carried count)."""
    own, masks = cell.robust, _masks(smaller)
    if not masks or own is None or not cell.checked:
        return cell, 0
    if scope is Scope.SHARED:  # one perturbation for all: keep the one with the lowest accuracy
        worst = min(masks, key=lambda m: float(m.float().mean()))
        if float(worst.float().mean()) < float(own.float().mean()):
            return with_robust(cell, worst.to(own.device).clone()), 1
        return cell, 0
    robust = own.clone()
    for m in masks:
        robust &= m.to(robust.device)
    carried = int((own & ~robust).sum())
    return (with_robust(cell, robust), carried) if carried else (cell, 0)
