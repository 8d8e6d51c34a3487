"""The grid evaluations of one model and seed: attacks on every cell of every parametrization (with the nesting
carry), certificates, sanity flags, the scale and quantization analyses; each piece recorded in the study state
as soon as it is done, so a unit stopped halfway resumes from its last finished piece."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import torch
from torch import Tensor

from ..attacks import PGD, Attack, Loss
from ..datasets import Dataset
from ..evaluation import Cell, Certificate, NoiseCheck, certify, collect_flags, evaluate_cell
from ..threat import Scope, ThreatModel
from .cells import Axes, GridCell, carry, cell_fields, main_axes, misses, with_robust
from .quantization_grid import quantization_analysis
from .scale import PARAMETRIZATIONS, layer_stats, rescaled
from .schema import StudyConfig

__all__ = ["StateView", "StudyProgress"]

#: progress(label, done, total)
StudyProgress = Callable[[str, int, int], None]


class StateView(Protocol):
    """The study state as a unit sees it: finished pieces by key (the driver's StudyState, or a worker's copy
    whose puts travel to the driver)."""

    def get(self, key: str) -> Any: ...

    def put(self, key: str, value: Any) -> None: ...


class _ModelRun:
    """The grid evaluations of one model and seed, each recorded in the study state as soon as it is done."""

    def __init__(
        self,
        name,
        seed: int,
        model,
        x,
        y,
        config: StudyConfig,
        data: Dataset,
        state: StateView,
        progress,
        axes: Axes | None = None,
    ) -> None:
        self.name, self.seed, self.model, self.x, self.y = name, seed, model, x, y
        self.label = name if len(config.run_seeds) == 1 else f"{name} seed {seed}"
        self.grid, self.domain = config.grid, data.domain
        self.axes = main_axes(config) if axes is None else axes
        self.methods = [m.value for m in config.certify.methods]
        self.state, self.progress = state, progress

    def threat(self, eps_x: float, eps_w: float, scope: Scope = Scope.PER_EXAMPLE) -> ThreatModel:
        a = self.axes
        return ThreatModel(
            eps_x=eps_x, eps_w=eps_w, weight_ball=a.ball, weight_mode=a.mode, scope=scope, domain=self.domain
        )

    def _tick(self, label: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(f"{self.label}: {label}", done, total)

    def _key(self, kind: str, ex: float, ew: float, last: str) -> str:
        kind = f"{kind}@{self.axes.tag}" if self.axes.tag else kind
        return f"{kind}/{self.name}/{self.seed}/{ex}/{ew}/{last}"

    def grid_cell(self, ex: float, ew: float, scope: Scope) -> GridCell | None:
        """The finished cell at (ex, ew, scope), or None."""
        saved = self.state.get(self._key("cell", ex, ew, scope.value))
        return None if saved is None else GridCell.from_json(saved)

    def cell(self, ex: float, ew: float, scope: Scope) -> Cell | None:
        found = self.grid_cell(ex, ew, scope)
        return None if found is None else found.cell

    def _smaller(self, ex: float, ew: float, scope: Scope) -> list[Cell]:
        """The checked cells of `scope` one grid step below (ex, ew) on each axis: threat sets inside this one.
        Their own smaller cells were carried into them already, so one step covers every nested cell."""
        xs, ws = self.axes.eps_x, self.axes.eps_w
        below = []
        if xs.index(ex) > 0:
            below.append((xs[xs.index(ex) - 1], ew))
        if ws.index(ew) > 0:
            below.append((ex, ws[ws.index(ew) - 1]))
        cells = [self.cell(a, b, scope) for a, b in below if a > 0 or b > 0]
        return [c for c in cells if c is not None and c.checked and c.robust is not None]

    def _attack_point(self, ex: float, ew: float, attack: Attack, clean_correct: Tensor) -> None:
        """Both scopes of one grid point via evaluate_cell (as `nonsingular evaluate`), then the nesting carry.

        The threat sets are nested (a larger eps contains every smaller one, and the per-example set contains the
        shared one), so a checked adversarial result of a smaller set is valid here: per example the worst is
        kept (per-example scope), the lowest-accuracy perturbation is kept (shared scope), and per-example
        examples broken by the shared perturbation count as broken. Where a smaller cell broke examples that
        this cell's own attack missed, a margin-loss restart runs first (cross-entropy saturates when the model
        collapses to one class) and is kept per example.
        """
        found: dict[Scope, GridCell] = {}
        scopes = sorted(self.grid.scopes, key=lambda s: s is Scope.SHARED)  # per-example first: shared may copy it
        for scope in scopes:
            threat = self.threat(ex, ew, scope)
            per_example = found[Scope.PER_EXAMPLE].cell if Scope.PER_EXAMPLE in found else None
            cell = evaluate_cell(self.model, self.x, self.y, threat, attack, clean_correct, None, per_example)
            own = cell.accuracy
            smaller = self._smaller(ex, ew, scope) if cell.checked and cell.robust is not None else []
            restarted = False
            if (
                scope is Scope.PER_EXAMPLE
                and cell.same_as is None
                and type(attack) is PGD  # the auto ensemble already runs margin-type (DLR) losses
                and attack.loss is Loss.CE
                and misses(cell, smaller)
            ):
                again = evaluate_cell(
                    self.model, self.x, self.y, threat, replace(attack, loss=Loss.MARGIN), clean_correct
                )
                if again.checked and again.robust is not None:
                    restarted = True
                    cell = with_robust(cell, cell.robust & again.robust.to(cell.robust.device))
            cell, carried = carry(cell, smaller, scope)
            found[scope] = GridCell(self.seed, ex, ew, scope.value, cell, own, carried, restarted)
        shared = found.get(Scope.SHARED)
        pe = found.get(Scope.PER_EXAMPLE)
        if shared and pe and pe.cell.checked and shared.cell.checked and shared.cell.same_as is None:
            pe.cell, extra = carry(pe.cell, [shared.cell], Scope.PER_EXAMPLE)
            pe.carried += extra
        for scope, record in found.items():
            self.state.put(self._key("cell", ex, ew, scope.value), record.to_json())

    def attack_cells(
        self, points, attack: Attack, clean_correct: Tensor, special: dict[tuple[float, float], Attack] | None = None
    ) -> list[dict[str, Any]]:
        """Every grid cell in both scopes (see _attack_point), with `attack` or, at a point of `special`, its
        attack; the result rows."""
        rows = []
        special = special or {}
        for i, (ex, ew) in enumerate(points):
            if any(self.state.get(self._key("cell", ex, ew, s.value)) is None for s in self.grid.scopes):
                self._attack_point(ex, ew, special.get((ex, ew), attack), clean_correct)
            for scope in sorted(self.grid.scopes, key=lambda s: s is Scope.SHARED):
                record = self.grid_cell(ex, ew, scope)
                assert record is not None
                rows.append(record.row())
            self._tick(f"{self.axes.tag} attacks".lstrip(), i + 1, len(points))
        return rows

    def quantization(self, config: StudyConfig, attack: Attack) -> dict[str, Any]:
        """The [quantization] section on this model (see study.quantization)."""
        section = config.quantization
        eps_x = config.headline.eps_x if section.eps_x is None else section.eps_x
        return quantization_analysis(
            self.model,
            self.x,
            self.y,
            section,
            eps_x,
            self.domain,
            attack,
            self.seed,
            lambda done, total: self._tick("quantization", done, total),
        )

    def scale_analysis(self, config: StudyConfig, attack: Attack, progress: StudyProgress | None) -> dict[str, Any]:
        """Layer statistics, the weight-only and joint cells at the headline eps_x in all four parametrizations
        (both scopes), and the rescaling check, on the first `scale.n_examples` examples (see study.scale)."""
        sc, hx = config.scale, config.headline.eps_x
        x, y = self.x[: sc.n_examples], self.y[: sc.n_examples]
        with torch.no_grad():
            clean_correct = self.model(x).argmax(1) == y
        scopes = sorted(self.grid.scopes, key=lambda s: s is Scope.SHARED)
        cells, accuracy = [], {}
        for k, (ball, mode) in enumerate(PARAMETRIZATIONS):
            eps_w = sc.eps_w(ball, mode)
            for ex in (0.0, hx):
                for scope in scopes:
                    threat = ThreatModel(
                        eps_x=ex, eps_w=eps_w, weight_ball=ball, weight_mode=mode, scope=scope, domain=self.domain
                    )
                    cell = evaluate_cell(self.model, x, y, threat, attack, clean_correct)
                    row = {"weight_ball": ball.value, "weight_mode": mode.value, "eps_x": ex, "eps_w": eps_w}
                    cells.append(row | {"scope": scope.value, "seed": self.seed, **cell_fields(cell)})
                    if ex == 0 and scope is Scope.PER_EXAMPLE:
                        accuracy[f"{ball.value} {mode.value}"] = cell.accuracy
            self._tick("scale", k + 1, len(PARAMETRIZATIONS) + len(sc.factors))
        rescaling = []
        for k, c in enumerate(sc.factors):
            model = rescaled(self.model, c)
            with torch.no_grad():
                change = float((model(x) - self.model(x)).abs().max())
            moved = {}
            for ball, mode in PARAMETRIZATIONS:
                threat = ThreatModel(eps_w=sc.eps_w(ball, mode), weight_ball=ball, weight_mode=mode, domain=self.domain)
                moved[f"{ball.value} {mode.value}"] = evaluate_cell(model, x, y, threat, attack, clean_correct).accuracy
            rescaling.append({"c": c, "max_logit_change": change, "accuracy": moved})
            self._tick("scale", len(PARAMETRIZATIONS) + k + 1, len(PARAMETRIZATIONS) + len(sc.factors))
        return {
            "n_examples": len(y),
            "layers": layer_stats(self.model, x),
            "cells": cells,
            "weight_only": accuracy,
            "rescaling": rescaling,
        }

    def sanity_flags(self, cells, clean: float, headline, attack: Attack) -> list[dict[str, Any]]:
        """Sanity flags of this model and seed (recorded in the state, so a resumed study does not redo the noise
        check).

        nested: along each grid axis, and from shared to per-example scope, the larger threat set may not show
        a higher robust accuracy (the clean accuracy stands at (0, 0)); the nesting carry makes the reported
        accuracies monotone, so this flags what the carry could not repair (an unchecked cell). noise: random
        points at the headline point's per-example joint cell. gradients and train-eval: the model at the clean
        points.
        """
        key = f"flags/{self.name}/{self.seed}"
        if self.state.get(key) is not None:
            return self.state.get(key)["flags"]

        def label(ex: float, ew: float, scope: str) -> str:
            return f"{self.label}: {scope} eps_x={ex:g} eps_w={ew:g}"

        accuracy = {label(c["eps_x"], c["eps_w"], c["scope"]): c["accuracy"] for c in cells}
        pairs = []
        present = {c["scope"] for c in cells}
        for scope in [s.value for s in self.grid.scopes if s.value in present]:  # an order that hashing cannot change
            accuracy[label(0.0, 0.0, scope)] = clean
            for i, ex in enumerate(self.grid.eps_x):
                for j, ew in enumerate(self.grid.eps_w):
                    if i + 1 < len(self.grid.eps_x):
                        pairs.append((label(ex, ew, scope), label(self.grid.eps_x[i + 1], ew, scope)))
                    if j + 1 < len(self.grid.eps_w):
                        pairs.append((label(ex, ew, scope), label(ex, self.grid.eps_w[j + 1], scope)))
                    if scope == Scope.SHARED.value:
                        pairs.append((label(ex, ew, scope), label(ex, ew, Scope.PER_EXAMPLE.value)))
        hx, hw = headline.eps_x, headline.eps_w
        cell = self.cell(hx, hw, Scope.PER_EXAMPLE)
        noise = []
        if cell is not None and cell.checked and cell.robust is not None:
            noise.append(NoiseCheck(label(hx, hw, Scope.PER_EXAMPLE.value), self.threat(hx, hw), cell.robust))
        found = collect_flags(self.model, self.x, self.y, accuracy, pairs, noise, attack, label=self.label)
        flags = [f.to_json() for f in found]
        self.state.put(key, {"flags": flags})
        return flags

    def certify_cells(self, points, clean_correct: Tensor, n_examples: int | None = None) -> list[dict[str, Any]]:
        """Certificates at the given grid points via certify (as `nonsingular certify`) on the first `n_examples`
        examples (default all), bounding only those the checked per-example attack left correct (a sound bound
        cannot certify the others); each row also holds that attack's accuracy on the same examples."""
        rows = []
        n = len(self.y) if n_examples is None else min(n_examples, len(self.y))
        tag = "" if n == len(self.y) else f"@{n}"  # state keys of whole-set certificates keep their old form
        for i, (ex, ew) in enumerate(points):
            attacked = self.cell(ex, ew, Scope.PER_EXAMPLE)
            survivors = attacked.robust if attacked is not None and attacked.checked else None
            survivors = clean_correct if survivors is None else survivors.to(self.y.device)
            survivors = survivors[:n]
            missing = [m for m in self.methods if self.state.get(self._key("cert", ex, ew, m + tag)) is None]
            if missing:
                threat = self.threat(ex, ew)
                rows_in = survivors.nonzero().flatten()
                for method in missing:
                    if len(rows_in) == 0:
                        record = Certificate(threat.describe(), method, 0.0, 0, n, 0, 0.0)
                    else:
                        report = certify(self.model, self.x[rows_in], self.y[rows_in], threat, [method])
                        record = Certificate.of(report.methods[method], threat, n)
                    self.state.put(self._key("cert", ex, ew, method + tag), record.to_json())
            for method in self.methods:
                record = Certificate.from_json(self.state.get(self._key("cert", ex, ew, method + tag)))
                rows.append(
                    {
                        "seed": self.seed,
                        "eps_x": ex,
                        "eps_w": ew,
                        "method": method,
                        "certified_accuracy": record.certified_accuracy,
                        "attacked_accuracy": float(survivors.float().mean()),
                        "examples": n,
                        "bounded_examples": record.bounded_examples,
                        "seconds": record.seconds,
                    }
                )
            self._tick("certificates", i + 1, len(points))
        return rows
