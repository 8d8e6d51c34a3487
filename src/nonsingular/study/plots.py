"""Figures of a study, from its results dict alone (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["write_figures"]


def _accuracy_grid(model: dict[str, Any], grid: dict[str, Any], scope: str) -> np.ndarray:
    acc = np.full((len(grid["eps_x"]), len(grid["eps_w"])), np.nan)
    acc[grid["eps_x"].index(0.0), grid["eps_w"].index(0.0)] = model["clean_accuracy"]  # no perturbation: clean
    for cell in model["cells"]:
        if cell["scope"] == scope and cell["accuracy"] is not None:
            acc[grid["eps_x"].index(cell["eps_x"]), grid["eps_w"].index(cell["eps_w"])] = cell["accuracy"]
    return acc


def heatmaps(results: dict[str, Any], path: Path) -> None:
    grid, models = results["grid"], results["models"]
    scopes = grid["scopes"]
    fig, axes = plt.subplots(
        len(scopes), len(models), figsize=(3.2 * len(models), 3.0 * len(scopes)), squeeze=False, constrained_layout=True
    )
    for col, (name, model) in enumerate(models.items()):
        for row, scope in enumerate(scopes):
            ax = axes[row][col]
            acc = _accuracy_grid(model, grid, scope)
            im = ax.imshow(100 * acc, vmin=0, vmax=100, cmap="viridis", origin="lower", aspect="auto")
            for i in range(acc.shape[0]):
                for j in range(acc.shape[1]):
                    if not np.isnan(acc[i, j]):
                        shade = "white" if acc[i, j] < 0.55 else "black"
                        ax.text(j, i, f"{100 * acc[i, j]:.0f}", ha="center", va="center", color=shade, fontsize=8)
            ax.set_xticks(range(len(grid["eps_w"])), [f"{v:g}" for v in grid["eps_w"]], fontsize=7, rotation=45)
            ax.set_yticks(range(len(grid["eps_x"])), [f"{v:g}" for v in grid["eps_x"]], fontsize=7)
            ax.set_title(f"{name}\n{scope}", fontsize=9)
            if col == 0:
                ax.set_ylabel("eps_x")
            if row == len(scopes) - 1:
                ax.set_xlabel("eps_w")
    fig.colorbar(im, ax=axes, shrink=0.8, label="robust accuracy (%)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(results: dict[str, Any], path: Path, axis: str) -> None:
    """Accuracy vs eps_w at eps_x = 0 (axis='eps_w') or vs eps_x at eps_w = 0 (axis='eps_x'), per-example scope."""
    grid, models = results["grid"], results["models"]
    other = "eps_x" if axis == "eps_w" else "eps_w"
    fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
    for name, model in models.items():
        points = sorted(
            [(0.0, model["clean_accuracy"])]
            + [
                (c[axis], c["accuracy"])
                for c in model["cells"]
                if c["scope"] == "per-example" and c[other] == 0 and c[axis] > 0 and c["accuracy"] is not None
            ]
        )
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, [100 * v for v in ys], marker="o", label=name)
    kind = "weight-only" if axis == "eps_w" else "input-only"
    ax.set_xlabel(f"{axis} ({grid['weight_mode']} {grid['weight_ball']})" if axis == "eps_w" else "eps_x (l_inf)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(f"{kind} attack, per-example scope")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def certified_vs_attacked(results: dict[str, Any], path: Path) -> None:
    grid, models = results["grid"], results["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(3.4 * len(models), 3.4), squeeze=False, constrained_layout=True)
    for ax, (name, model) in zip(axes[0], models.items(), strict=True):
        labels, attacked, certified = [], [], []
        for ex in grid["eps_x"]:
            for ew in grid["eps_w"]:
                if ex == 0 and ew == 0:
                    continue
                cell = next(
                    (
                        c
                        for c in model["cells"]
                        if c["eps_x"] == ex and c["eps_w"] == ew and c["scope"] == "per-example"
                    ),
                    None,
                )
                certs = [c["certified_accuracy"] for c in model["certified"] if c["eps_x"] == ex and c["eps_w"] == ew]
                if cell is None or cell["accuracy"] is None:
                    continue
                labels.append(f"{ex:g}/{ew:g}")
                attacked.append(100 * cell["accuracy"])
                certified.append(100 * max(certs) if certs else np.nan)
        idx = np.arange(len(labels))
        ax.fill_between(idx, certified, attacked, color="tab:orange", alpha=0.25, label="unknown")
        ax.plot(idx, attacked, marker="o", label="attacked (upper bound)")
        ax.plot(idx, certified, marker="s", label="certified (lower bound)")
        ax.set_xticks(idx, labels, rotation=90, fontsize=6)
        ax.set_ylim(0, 100)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("eps_x / eps_w", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def radius_distributions(results: dict[str, Any], path: Path) -> bool:
    models = {n: m for n, m in results["models"].items() if m.get("radius")}
    if not models:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for name, model in models.items():
        for ax, key in zip(axes, ("attack", "certified"), strict=True):
            values = np.sort(np.asarray(model["radius"][key], dtype=float))
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=name)
    some = next(iter(models.values()))["radius"]
    ray = f"(eps_x, eps_w) = s ({some['k_x']:g}, {some['k_w']:g})"
    axes[0].set_title(f"attacked radius (upper bound) along {ray}", fontsize=9)
    axes[1].set_title(f"certified radius (lower bound) along {ray}", fontsize=9)
    for ax in axes:
        ax.set_xlabel("s")
        ax.set_ylabel("fraction of examples with radius <= s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_figures(results: dict[str, Any], folder: Path) -> list[str]:
    """Write every figure into `folder`; returns the file names written."""
    names = []
    heatmaps(results, folder / "heatmaps.png")
    names.append("heatmaps.png")
    curves(results, folder / "weight_fragility.png", "eps_w")
    curves(results, folder / "input_robustness.png", "eps_x")
    names += ["weight_fragility.png", "input_robustness.png"]
    if any(m.get("certified") for m in results["models"].values()):
        certified_vs_attacked(results, folder / "certified_vs_attacked.png")
        names.append("certified_vs_attacked.png")
    if radius_distributions(results, folder / "radius.png"):
        names.append("radius.png")
    return names
