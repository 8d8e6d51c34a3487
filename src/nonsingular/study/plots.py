"""Figures of a study, from its typed results alone (matplotlib, Agg backend, PNG).

Every value is the mean over the study's seeds; error bars are one standard deviation (none with one seed).
Radii axes are categorical (one tick per grid value), so small radii, where the claims are decided, are as
readable as large ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..runtime import atomic_write
from .records import ModelResult, StudyResults
from .stats import Stat, cell_stat, certified_stat, runs
from .verdicts import parametrization_views

__all__ = ["write_figures"]


def _save(fig: Any, path: Path) -> None:
    """Write the figure atomically (a full disk leaves the previous image, never half of one)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png"))


def _stat(model: ModelResult, ex: float, ew: float, scope: str) -> Stat:
    if ex == 0 and ew == 0:  # no perturbation: the clean accuracy
        return Stat.of([r.clean_accuracy for r in runs(model)])
    return cell_stat(model, ex, ew, scope)


def heatmaps(results: StudyResults, path: Path) -> None:
    grid, models = results.grid, results.models
    scopes = grid["scopes"]
    fig, axes = plt.subplots(
        len(scopes), len(models), figsize=(3.2 * len(models), 3.0 * len(scopes)), squeeze=False, constrained_layout=True
    )
    for col, (name, model) in enumerate(models.items()):
        for row, scope in enumerate(scopes):
            ax = axes[row][col]
            stats = [[_stat(model, ex, ew, scope) for ew in grid["eps_w"]] for ex in grid["eps_x"]]
            acc = np.array([[np.nan if s.mean is None else s.mean for s in line] for line in stats])
            im = ax.imshow(100 * acc, vmin=0, vmax=100, cmap="viridis", origin="lower", aspect="auto")
            for i, line in enumerate(stats):
                for j, st in enumerate(line):
                    if st.mean is not None:
                        shade = "white" if st.mean < 0.55 else "black"
                        text = f"{100 * st.mean:.0f}" + ("" if st.sd is None else f"\n±{100 * st.sd:.0f}")
                        ax.text(j, i, text, ha="center", va="center", color=shade, fontsize=7)
            ax.set_xticks(range(len(grid["eps_w"])), [f"{v:g}" for v in grid["eps_w"]], fontsize=7, rotation=45)
            ax.set_yticks(range(len(grid["eps_x"])), [f"{v:g}" for v in grid["eps_x"]], fontsize=7)
            ax.set_title(f"{name}\n{scope}", fontsize=9)
            if col == 0:
                ax.set_ylabel("eps_x")
            if row == len(scopes) - 1:
                ax.set_xlabel("eps_w")
    fig.colorbar(im, ax=axes, shrink=0.8, label="robust accuracy (%, mean over seeds)")
    _save(fig, path)
    plt.close(fig)


def curves(results: StudyResults, path: Path, axis: str) -> None:
    """Accuracy vs eps_w at eps_x = 0 (axis='eps_w': one row of panels per weight parametrization of the grid,
    one panel per scope) or vs eps_x at eps_w = 0 (axis='eps_x'), categorical radius axis, mean ± sd over
    seeds."""
    views = parametrization_views(results) if axis == "eps_w" else parametrization_views(results)[:1]
    scopes = results.grid["scopes"] if axis == "eps_w" else results.grid["scopes"][:1]  # input-only: one
    fig, axes = plt.subplots(
        len(views), len(scopes), figsize=(5.5 * len(scopes), 3.8 * len(views)), squeeze=False, constrained_layout=True
    )
    for row, (label, view) in enumerate(views):
        grid, models = view.grid, view.models
        values = grid[axis]
        width = 0.35 / max(1, len(models))
        for ax, scope in zip(axes[row], scopes, strict=True):
            for k, (name, model) in enumerate(models.items()):
                stats = [
                    _stat(model, 0.0, v, scope) if axis == "eps_w" else _stat(model, v, 0.0, scope) for v in values
                ]
                xs = [i + (k - (len(models) - 1) / 2) * width for i, st in enumerate(stats) if st.mean is not None]
                ys = [100 * st.mean for st in stats if st.mean is not None]
                err = [100 * (st.sd or 0.0) for st in stats if st.mean is not None]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
            ax.set_xticks(range(len(values)), [f"{v:g}" for v in values], fontsize=8)
            kind = "weight-only" if axis == "eps_w" else "input-only"
            ax.set_xlabel(f"eps_w ({label}; categorical)" if axis == "eps_w" else "eps_x (l_inf)")
            ax.set_ylabel("robust accuracy (%)")
            ax.set_title(f"{kind} attack, {label}, {scope} scope" if axis == "eps_w" else f"{kind} attack", fontsize=10)
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def certified_vs_attacked(results: StudyResults, path: Path) -> None:
    """Per model: attacked (solid, upper bound) and certified (dashed, lower bound) accuracy vs eps_w, one line
    per eps_x, per-example scope."""
    grid, models = results.grid, results.models
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.6), squeeze=False, constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    idx = np.arange(len(grid["eps_w"]))
    for ax, (name, model) in zip(axes[0], models.items(), strict=True):
        for k, ex in enumerate(grid["eps_x"]):
            attacked = [_stat(model, ex, ew, "per-example").mean for ew in grid["eps_w"]]
            certified = [certified_stat(model, ex, ew)[0].mean if ex > 0 or ew > 0 else None for ew in grid["eps_w"]]
            colour = colours[k % len(colours)]
            ax.plot(
                idx,
                [np.nan if v is None else 100 * v for v in attacked],
                marker="o",
                color=colour,
                label=f"eps_x={ex:g}",
            )
            ax.plot(idx, [np.nan if v is None else 100 * v for v in certified], marker="s", ls="--", color=colour)
        ax.set_xticks(idx, [f"{v:g}" for v in grid["eps_w"]], rotation=45, fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("eps_w (categorical)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%): attacked solid, certified dashed")
    axes[0][0].legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated points (no other point is at least as good on both axes and better on one), by x."""
    front = [p for p in points if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in points)]
    return sorted(front)


def pareto(results: StudyResults, path: Path) -> None:
    """Clean vs joint robust accuracy at the headline point, one panel per scope: every seed of every model (small
    markers), the mean ± sd over seeds (large markers, error bars), and the Pareto front of the means (dotted):
    the trade-off each defence makes."""
    hx, hw = results.headline["eps_x"], results.headline["eps_w"]
    scopes = results.grid["scopes"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*Xh<>"
    fig, axes = plt.subplots(1, len(scopes), figsize=(5.6 * len(scopes), 4.4), squeeze=False, constrained_layout=True)
    for ax, scope in zip(axes[0], scopes, strict=True):
        means = []
        for k, (name, model) in enumerate(results.models.items()):
            clean, joint = _stat(model, 0.0, 0.0, scope), _stat(model, hx, hw, scope)
            if clean.mean is None or joint.mean is None:
                continue
            colour, marker = colours[k % len(colours)], markers[(k // len(colours)) % len(markers)]
            for run in runs(model):
                each = [
                    c["accuracy"]
                    for c in model.cells
                    if c.get("seed") == run.seed and c["eps_x"] == hx and c["eps_w"] == hw and c["scope"] == scope
                ]
                if each and each[0] is not None:
                    ax.plot(100 * run.clean_accuracy, 100 * each[0], marker, color=colour, alpha=0.35, ms=4)
            ax.errorbar(
                100 * clean.mean,
                100 * joint.mean,
                xerr=100 * (clean.sd or 0.0),
                yerr=100 * (joint.sd or 0.0),
                marker=marker,
                color=colour,
                capsize=3,
                label=f"{name} ({model.objective})",
            )
            means.append((100 * clean.mean, 100 * joint.mean))
        if len(means) > 1:
            xs, ys = zip(*_front(means), strict=True)
            ax.plot(xs, ys, ":", color="grey", lw=1, label="Pareto front (means)")
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel(f"joint robust accuracy (%) at eps_x={hx:g}, eps_w={hw:g}")
        ax.set_title(f"clean vs joint robust, {scope} scope (small: one seed each)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)


def radius_distributions(results: StudyResults, path: Path) -> bool:
    """Empirical distributions of the attacked and certified radii (all seeds pooled); False when none."""
    models = {n: m for n, m in results.models.items() if any(r.radius for r in runs(m))}
    if not models:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    some = None
    for name, model in models.items():
        for ax, key in zip(axes, ("attack", "certified"), strict=True):
            pooled = [v for r in runs(model) if r.radius for v in r.radius[key]]
            values = np.sort(np.asarray(pooled, dtype=float))
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=name)
        some = next(r.radius for r in runs(model) if r.radius)
    assert some is not None
    ray = f"(eps_x, eps_w) = s ({some['k_x']:g}, {some['k_w']:g})"
    axes[0].set_title(f"attacked radius (upper bound) along {ray}", fontsize=9)
    axes[1].set_title(f"certified radius (lower bound) along {ray}", fontsize=9)
    for ax in axes:
        ax.set_xlabel("s")
        ax.set_ylabel("fraction of examples with radius <= s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return True


def quantization(results: StudyResults, path: Path) -> bool:
    """Accuracy against bits per weight, one panel per grid granularity, at the section's eps_x: worst shared
    rounding (solid), certified (dashed), round-to-nearest (dotted), one colour per model; False when none."""
    from .quantization_grid import quantization_stats

    stats = quantization_stats(results)
    if not stats:
        return False
    eps_x = max(e["eps_x"] for e in stats)
    stats = [e for e in stats if e["eps_x"] == eps_x]
    granularities = list(dict.fromkeys(e["granularity"] for e in stats))
    bits = sorted({e["bits"] for e in stats}, reverse=True)
    models = list(dict.fromkeys(e["model"] for e in stats))
    fig, axes = plt.subplots(1, len(granularities), figsize=(5.2 * len(granularities), 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"worst shared": "-", "certified": "--", "nearest": ":"}
    for ax, granularity in zip(axes[0], granularities, strict=True):
        for m, name in enumerate(models):
            for column, style in styles.items():
                points = {
                    e["bits"]: e["stats"][column]
                    for e in stats
                    if e["model"] == name and e["granularity"] == granularity
                }
                xs = [i for i, b in enumerate(bits) if b in points and points[b].mean is not None]
                means = [100 * points[bits[i]].mean for i in xs]
                errors = [100 * (points[bits[i]].sd or 0.0) for i in xs]
                ax.errorbar(
                    xs, means, yerr=errors, linestyle=style, marker="o", markersize=3, capsize=2,
                    color=colours[m % len(colours)], label=f"{name}, {column}",
                )  # fmt: skip
        ax.set_xticks(range(len(bits)), [f"int{b}" for b in bits])
        ax.set_ylim(-2, 102)
        ax.set_xlabel("weight grid (bits per weight)")
        ax.set_ylabel("accuracy (%, mean ± sd over seeds)")
        ax.set_title(f"{granularity} scales, eps_x = {eps_x:g}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def write_figures(results: StudyResults, folder: Path) -> list[str]:
    """Write every figure into `folder`; returns the file names written."""
    names = []
    heatmaps(results, folder / "heatmaps.png")
    names.append("heatmaps.png")
    curves(results, folder / "weight_fragility.png", "eps_w")
    curves(results, folder / "input_robustness.png", "eps_x")
    pareto(results, folder / "pareto.png")
    names += ["weight_fragility.png", "input_robustness.png", "pareto.png"]
    if any(m.certified for m in results.models.values()):
        certified_vs_attacked(results, folder / "certified_vs_attacked.png")
        names.append("certified_vs_attacked.png")
    if radius_distributions(results, folder / "radius.png"):
        names.append("radius.png")
    if quantization(results, folder / "quantization.png"):
        names.append("quantization.png")
    return names
