"""The study's quantization section: which defences survive deployment on an integer weight grid.

Per model and seed, for every grid of [quantization] (bits x per-tensor / per-channel scales, one scheme), the
accuracy of the model quantized by round-to-nearest, by random (stochastic) rounding, and by the worst-case
rounding the joint attack finds (shared scope: one deployed model for all inputs; per-example: a rounding per
input), each measured by the ordinary module on weights exactly on the grid, and the certified accuracy of the
round-to-nearest box (every weight within s/2 of its float value), at eps_x = 0 and the section's eps_x
(nonsingular.deployment.quantize.evaluate_quantization does the work).

Survival rule (stated in the report): a model survives a grid at an eps_x when its worst-case shared-rounding
accuracy, mean over seeds, is within SURVIVAL_POINTS percentage points of its float accuracy at that eps_x.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..deployment import QuantizationSpec, Rounding, evaluate_quantization
from ..errors import require_finite
from .records import ModelResult, StudyResults
from .schema import QuantizationConfig
from .stats import Stat, runs

__all__ = [
    "COLUMNS",
    "SURVIVAL_POINTS",
    "quantization_analysis",
    "quantization_rows",
    "quantization_stats",
    "quantization_summary",
]

#: A model survives a grid when its worst shared rounding costs at most this many points of float accuracy.
SURVIVAL_POINTS = 5.0

#: Report columns and the evaluate_quantization row each comes from ("certified" matches its method's label).
COLUMNS = {
    "float": "float",
    "nearest": "nearest",
    "random": "random rounding",
    "worst shared": "worst-case rounding (shared)",
    "worst per-example": "worst-case rounding (per-example)",
    "certified": "certified",
}


def quantization_analysis(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    section: QuantizationConfig,
    eps_x: float,
    domain: tuple[float, float],
    attack: Any,
    seed: int,
    tick: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Every grid of the section on the first `section.n_examples` of (x, y); a JSON-ready dict.

    Args:
        eps_x: the input radius of the "with input noise" rows (data units); 0 rows are always present.
        attack: the study's attack (config and model at call time); every result is checked.
        seed: the random-rounding draws' seed.
        tick: tick(done, total) after each grid.

    Returns:
        {"n_examples", "eps_x", "scheme", "method", "grids": [{"bits", "granularity", "accuracy":
        {column: {eps_x: accuracy}}, "seconds", "scale": per-layer grid description}]}, every accuracy finite.
    """
    x, y = x[: section.n_examples], y[: section.n_examples]
    combos = [(bits, g) for bits in section.bits for g in section.granularity]
    grids = []
    for k, (bits, granularity) in enumerate(combos):
        spec = QuantizationSpec(bits, granularity == "per-channel", section.scheme, Rounding.NEAREST)
        report = evaluate_quantization(
            model,
            x,
            y,
            spec,
            attack,
            eps_x=eps_x,
            domain=domain,
            random_draws=section.random_draws,
            certify_method=section.method.value,
            seed=seed,
        )
        accuracy: dict[str, dict[str, float]] = {}
        for column, label in COLUMNS.items():
            row = next((r for name, r in report.rows.items() if name.startswith(label)), None)
            if row is None:
                raise RuntimeError(f"evaluate_quantization gave no '{label}' row")  # a bug, not bad input
            accuracy[column] = {
                f"{ex:g}": require_finite(acc, f"{column} accuracy at int{bits} {granularity}, eps_x={ex:g}")
                for ex, acc in row.items()
            }
        grids.append(
            {
                "bits": bits,
                "granularity": granularity,
                "accuracy": accuracy,
                "seconds": report.seconds,
                "scale": report.grids,
            }
        )
        if tick is not None:
            tick(k + 1, len(combos))
    return {
        "n_examples": len(y),
        "eps_x": float(eps_x),
        "scheme": section.scheme.value,
        "method": section.method.value,
        "grids": grids,
    }


def _sections(model: ModelResult) -> list[dict[str, Any]]:
    return [r.quantization for r in runs(model) if r.quantization]


def quantization_stats(results: StudyResults) -> list[dict[str, Any]]:
    """Per model, grid and eps_x: column -> Stat over seeds (mean and sd of the accuracy)."""
    out = []
    for name, model in results.models.items():
        sections = _sections(model)
        if not sections:
            continue
        for g, grid in enumerate(sections[0]["grids"]):
            for ex in grid["accuracy"]["float"]:
                stats = {c: Stat.of([s["grids"][g]["accuracy"][c].get(ex) for s in sections]) for c in COLUMNS}
                out.append(
                    {
                        "model": name,
                        "bits": grid["bits"],
                        "granularity": grid["granularity"],
                        "eps_x": float(ex),
                        "stats": stats,
                    }
                )
    return out


def quantization_rows(results: StudyResults) -> list[dict[str, Any]]:
    """The CSV table: one row per model, seed, grid and eps_x with every column's accuracy."""
    rows = []
    for name, model in results.models.items():
        for run in runs(model):
            section = run.quantization
            if not section:
                continue
            for grid in section["grids"]:
                for ex in grid["accuracy"]["float"]:
                    row = {
                        "model": name,
                        "seed": run.seed,
                        "bits": grid["bits"],
                        "granularity": grid["granularity"],
                        "scheme": section["scheme"],
                        "eps_x": float(ex),
                    }
                    rows.append(row | {c: grid["accuracy"][c][ex] for c in COLUMNS})
    return rows


def _grid_name(entry: dict[str, Any]) -> str:
    return f"int{entry['bits']} {entry['granularity']}"


def quantization_summary(results: StudyResults) -> list[str]:
    """Which defences survive which grid (the rule in the module docstring), and who certifies most."""
    stats = quantization_stats(results)
    if not stats:
        return []
    lines = []
    for ex in sorted({e["eps_x"] for e in stats}):
        at = [e for e in stats if e["eps_x"] == ex]
        names = list(dict.fromkeys(_grid_name(e) for e in at))
        for grid in names:
            entries = [e for e in at if _grid_name(e) == grid]
            survivors, costs = [], []
            for e in entries:
                fl, worst = e["stats"]["float"].mean, e["stats"]["worst shared"].mean
                if fl is None or worst is None:
                    continue
                cost = 100 * (fl - worst)
                costs.append(f"{e['model']} {cost:+.1f}")
                if cost <= SURVIVAL_POINTS:
                    survivors.append(e["model"])
            best = max(entries, key=lambda e: e["stats"]["certified"].mean or -1.0)
            lines.append(
                f"{grid}, eps_x = {ex:g}: survive the worst-case rounding: "
                f"{', '.join(survivors) if survivors else 'none'} (points lost to it, float minus worst shared: "
                f"{'; '.join(costs)}); most certified: {best['model']} {best['stats']['certified'].text()}"
            )
    return lines
