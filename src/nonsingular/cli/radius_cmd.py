"""`nonsingular radius`: per-example attacked (upper) and certified (lower) radius along a ray."""

from __future__ import annotations

import time
from typing import Annotated

import torch
import typer
from rich.table import Table

from ..attacks import PGD
from ..bounds import margin_bounds
from ..radius import Ray, attacked_radius, certified_radius
from ..threat import EpsMode, ThreatModel, WeightBall
from .common import (
    BallOpt,
    CheckpointOpt,
    DataOpt,
    DeviceOpt,
    ForceOpt,
    JsonOutOpt,
    ModelOpt,
    ModeOpt,
    WeightsOpt,
    check_writable,
    console,
    progress_bar,
    resolve_device,
    write_json,
)
from .loading import load_model_and_data, select_examples


def radius(
    checkpoint: CheckpointOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    k_x: Annotated[float, typer.Option("--k-x", help="Ray direction for eps_x (data units per unit of s).")] = 1.0,
    k_w: Annotated[float, typer.Option("--k-w", help="Ray direction for eps_w (weight units per unit of s).")] = 0.04,
    s_max: Annotated[float, typer.Option("--s-max", help="Largest s searched; radii beyond it are censored.")] = 0.2,
    iterations: Annotated[int, typer.Option(help="Bisection steps: resolution s_max / 2**iterations.")] = 8,
    weight_ball: BallOpt = WeightBall.ELEMENTWISE,
    weight_mode: ModeOpt = EpsMode.ABSOLUTE,
    method: Annotated[str, typer.Option(help="Certificate for the lower bound: ibp or crown.")] = "crown",
    steps: Annotated[int, typer.Option(help="Attack steps for the upper bound.")] = 20,
    n_examples: Annotated[int, typer.Option("--n-examples", help="First N test examples.")] = 100,
    data: DataOpt = None,
    device: DeviceOpt = "auto",
    out: JsonOutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Bisect each example's robustness radius along (eps_x, eps_w) = s (k_x, k_w): the smallest s where the
    attack finds a verified error (upper bound) and the largest s a certificate proves (lower bound).
    """
    check_writable(out, force)
    loaded = load_model_and_data(checkpoint, data, model, weights)
    run_device = resolve_device(device)
    x, y = select_examples(loaded.data, n_examples)
    x, y = x.to(run_device), y.to(run_device)
    ray = Ray(k_x, k_w, ThreatModel(weight_ball=weight_ball, weight_mode=weight_mode, domain=loaded.data.domain))
    s_hi = min(s_max, ray.s_max)
    net = loaded.model.to(run_device)
    t0 = time.perf_counter()
    with progress_bar("radius", total=2) as update:
        upper = attacked_radius(net, x, y, ray, PGD(steps=steps), s_hi, iterations)
        update(1, 2, "certified radius")
        lower = certified_radius(
            x, y, ray, lambda a, b, t: margin_bounds(net, a.double(), b, t, method).certified, s_hi, iterations
        )
        update(2, 2)
    table = Table(title=f"radius along (eps_x, eps_w) = s ({k_x:g}, {k_w:g}), {len(y)} examples")
    table.add_column("bound")
    for q in ("min", "25%", "median", "75%", "max", "censored"):
        table.add_column(q, justify="right")
    for label, res in (("attacked (upper)", upper), ("certified (lower)", lower)):
        qs = torch.quantile(res.radius, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
        table.add_row(label, *(f"{v:.4g}" for v in qs.tolist()), str(int(res.censored.sum())))
    console.print(table)
    gap_ok = bool((lower.radius <= upper.radius + 1e-12).all())
    console.print(f"certified <= attacked for every example: {gap_ok}; took {time.perf_counter() - t0:.1f} s")
    if out is not None:
        write_json(
            out,
            {
                "checkpoint": None if checkpoint is None else str(checkpoint),
                "model": model,
                "k_x": k_x,
                "k_w": k_w,
                "s_max": s_hi,
                "method": method,
                "threat": ray.base.describe(),
                "attacked": upper.radius.tolist(),
                "certified": lower.radius.tolist(),
                "attacked_censored": upper.censored.tolist(),
                "certified_censored": lower.censored.tolist(),
            },
        )
        console.print(f"wrote {out}")
