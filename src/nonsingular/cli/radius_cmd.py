"""`nonsingular radius`: per-example attacked (upper) and certified (lower) radius along a ray."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..apgd import AttackKind
from ..bounds import BoundMethod, margin_bounds
from ..radius import QUANTILES, RadiusReport, RadiusSettings, Ray, measure_radii
from ..threat import EpsMode, ThreatModel, WeightBall
from .common import (
    AcceptDataOpt,
    AttackOpt,
    BallOpt,
    CheckpointOpt,
    DataOpt,
    DeviceOpt,
    ForceOpt,
    JsonOutOpt,
    LayersOpt,
    ModelOpt,
    ModeOpt,
    WeightsOpt,
    build_attack,
    check_writable,
    console,
    layer_names,
    progress_bar,
    resolve_device,
    validated,
    write_json,
)
from .loading import load_workload

_DEFAULTS = RadiusSettings()


def radius(
    checkpoint: CheckpointOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    k_x: Annotated[
        float, typer.Option("--k-x", help="eps_x per unit of s: eps_x = s k_x (data units, inputs in [0, 1]).")
    ] = _DEFAULTS.k_x,
    k_w: Annotated[
        float,
        typer.Option(
            "--k-w",
            help="eps_w per unit of s: eps_w = s k_w (absolute mode: weight units; relative mode: a fraction of "
            "|W| (elementwise) or of ||W||_inf (operator)).",
        ),
    ] = _DEFAULTS.k_w,
    k_b: Annotated[
        float, typer.Option("--k-b", help="eps_b per unit of s: eps_b = s k_b (same mode as weights); 0: biases fixed.")
    ] = _DEFAULTS.k_b,
    s_max: Annotated[
        float, typer.Option("--s-max", help="Largest s searched (> 0); radii beyond it are censored.")
    ] = _DEFAULTS.s_max,
    iterations: Annotated[
        int, typer.Option(help="Bisection steps (1-30): resolution s_max / 2**iterations.")
    ] = _DEFAULTS.iterations,
    weight_ball: BallOpt = WeightBall.ELEMENTWISE,
    weight_mode: ModeOpt = EpsMode.ABSOLUTE,
    layers: LayersOpt = None,
    method: Annotated[BoundMethod, typer.Option(help="Certificate for the lower bound.")] = BoundMethod.CROWN,
    attack: AttackOpt = AttackKind.AUTO,
    steps: Annotated[
        int | None, typer.Option(help="Attack steps for the upper bound (>= 1) [default: auto 50, pgd 20].")
    ] = None,
    restarts: Annotated[int, typer.Option(help="Attack restarts; each example keeps its worst.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Examples per attack batch.")] = 256,
    seed: Annotated[int, typer.Option(help="Attack random-start seed.")] = 0,
    n_examples: Annotated[int, typer.Option("--n-examples", help="First N test examples.")] = _DEFAULTS.n_examples,
    data: DataOpt = None,
    accept_data_change: AcceptDataOpt = False,
    device: DeviceOpt = "auto",
    out: JsonOutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Bisect each example's robustness radius along (eps_x, eps_w, eps_b) = s (k_x, k_w, k_b): the smallest s
    where the attack finds a verified error (upper bound) and the largest s a certificate proves (lower bound).
    """
    check_writable(out, force)
    settings = validated(
        RadiusSettings, k_x=k_x, k_w=k_w, k_b=k_b, s_max=s_max, n_examples=n_examples, iterations=iterations
    )
    chosen = build_attack(attack, steps=steps, restarts=restarts, batch_size=batch_size, seed=seed)
    run_device = resolve_device(device)
    base = validated(ThreatModel, weight_ball=weight_ball, weight_mode=weight_mode, layers=layer_names(layers))
    work = load_workload(checkpoint, data, model, weights, base, n_examples, run_device, accept_data_change)
    ray = Ray(settings.k_x, settings.k_w, work.threat, k_b=settings.k_b)
    ray.threat(min(settings.s_max, ray.s_max)).check_resolvable(work.model)

    def certify(a, b, t):  # float64 bounds: their rounding is negligible
        return margin_bounds(work.model, a.double(), b, t, method).certified

    with progress_bar("attacked radius", total=2) as update:
        report = measure_radii(
            work.model, work.x, work.y, ray, chosen, certify, method.value, settings.s_max, settings.iterations, update
        )
    console.print(
        render_table(
            report,
            title=f"radius along (eps_x, eps_w, eps_b) = s ({k_x:g}, {k_w:g}, {k_b:g}), "
            f"{len(work.y)} examples of {work.name}",
        )
    )
    console.print(
        f"certified <= attacked for every example: {report.consistent}; took {report.seconds:.1f} s", highlight=False
    )
    if out is not None:
        write_json(out, {**report.to_json(), **work.source_fields()})
        console.print(f"wrote {out}")


def render_table(report: RadiusReport, title: str) -> Table:
    table = Table(title=title)
    table.add_column("bound")
    for q in (*QUANTILES, "censored"):
        table.add_column(q, justify="right")
    for label, which in (("attacked (upper)", "attacked"), ("certified (lower)", "certified")):
        result = report.attacked if which == "attacked" else report.certified
        qs = report.quantiles(which)
        table.add_row(label, *(f"{v:.4g}" for v in qs.values()), str(int(result.censored.sum())))
    return table
