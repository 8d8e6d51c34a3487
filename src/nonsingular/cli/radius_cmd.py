"""`nonsingular radius`: per-example attacked (upper) and certified (lower) radius along a ray."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..attacks import AttackKind
from ..bounds import BoundMethod
from ..deployment import Rounding
from ..evaluation import certified_mask
from ..evaluation.radius import QUANTILES, RadiusReport, RadiusSettings, Ray, measure_radii
from ..threat import EpsMode, ThreatModel, WeightBall
from . import options as opt
from .common import (
    UserError,
    build_attack,
    check_writable,
    console,
    layer_names,
    progress_bar,
    quantization_spec,
    resolve_device,
    validated,
    write_json,
)
from .loading import load_workload

_DEFAULTS = RadiusSettings()
# With --quantize the weight direction is the grid: s counts multiples of its rounding radius, inputs fixed unless
# --k-x says otherwise; s_max 16 reaches a grid 16x as coarse (4 bits fewer).
_QUANTIZED = RadiusSettings(k_x=0.0, k_w=1.0, s_max=16.0)


def radius(
    checkpoint: opt.Checkpoint = None,
    model: opt.Model = None,
    weights: opt.Weights = None,
    k_x: Annotated[
        float | None,
        typer.Option(
            "--k-x",
            help=f"eps_x per unit of s: eps_x = s k_x (data units, inputs in [0, 1]) [default: {_DEFAULTS.k_x:g}; "
            f"with --quantize {_QUANTIZED.k_x:g}].",
        ),
    ] = None,
    k_w: Annotated[
        float | None,
        typer.Option(
            "--k-w",
            help="eps_w per unit of s: eps_w = s k_w (absolute mode: weight units; relative mode: a fraction of "
            "|W| (elementwise) or of ||W||_inf (operator); with --quantize: multiples of the grid's per-weight "
            f"rounding radius, so s k_w = 1 is the grid) [default: {_DEFAULTS.k_w:g}; with --quantize "
            f"{_QUANTIZED.k_w:g}].",
        ),
    ] = None,
    k_b: Annotated[
        float, typer.Option("--k-b", help="eps_b per unit of s: eps_b = s k_b (same mode as weights); 0: biases fixed.")
    ] = _DEFAULTS.k_b,
    s_max: Annotated[
        float | None,
        typer.Option(
            "--s-max",
            help=f"Largest s searched (> 0); radii beyond it are censored [default: {_DEFAULTS.s_max:g}; "
            f"with --quantize {_QUANTIZED.s_max:g}].",
        ),
    ] = None,
    iterations: Annotated[
        int, typer.Option(help="Bisection steps (1-30): resolution s_max / 2**iterations.")
    ] = _DEFAULTS.iterations,
    weight_ball: opt.Ball = WeightBall.ELEMENTWISE,
    weight_mode: opt.Mode = EpsMode.ABSOLUTE,
    layers: opt.Layers = None,
    method: Annotated[BoundMethod, typer.Option(help="Certificate for the lower bound.")] = BoundMethod.CROWN,
    attack: opt.Attack = AttackKind.AUTO,
    steps: Annotated[
        int | None, typer.Option(help="Attack steps for the upper bound (>= 1) [default: auto 50, pgd 20].")
    ] = None,
    restarts: Annotated[int, typer.Option(help="Attack restarts; each example keeps its worst.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Examples per attack batch.")] = 256,
    seed: Annotated[int, typer.Option(help="Attack random-start seed.")] = 0,
    n_examples: Annotated[int, typer.Option("--n-examples", help="First N test examples.")] = _DEFAULTS.n_examples,
    quantize: opt.Quantize = None,
    per_channel: opt.PerChannel = False,
    symmetric: opt.Symmetric = True,
    rounding: opt.Rounding = Rounding.NEAREST,
    data: opt.Data = None,
    accept_data_change: opt.AcceptDataChange = False,
    device: opt.Device = "auto",
    out: opt.JsonOut = None,
    force: opt.Force = False,
) -> None:
    """Bisect each example's robustness radius along (eps_x, eps_w, eps_b) = s (k_x, k_w, k_b): the smallest s
    where the attack finds a checked error (upper bound) and the largest s a certificate proves (lower bound).
    With --quantize the weight direction is the model's own integer grid: s k_w = 1 is every rounding of the
    weights to that grid, s k_w = 2 a grid twice as coarse.
    """
    check_writable(out, force)
    spec = quantization_spec(quantize, per_channel, symmetric, rounding, 0.0, weight_ball)
    if spec is not None and weight_mode is not EpsMode.ABSOLUTE:
        raise UserError("--quantize radii are absolute grid steps; leave out --weight-mode")
    defaults = _DEFAULTS if spec is None else _QUANTIZED
    settings = validated(
        RadiusSettings,
        k_x=defaults.k_x if k_x is None else k_x,
        k_w=defaults.k_w if k_w is None else k_w,
        k_b=k_b,
        s_max=defaults.s_max if s_max is None else s_max,
        n_examples=n_examples,
        iterations=iterations,
    )
    if spec is not None and settings.k_w == 0:
        raise UserError("--quantize with --k-w 0 leaves the grid out of the ray; give --k-w > 0 (1 = the grid)")
    chosen = build_attack(attack, steps=steps, restarts=restarts, batch_size=batch_size, seed=seed)
    run_device = resolve_device(device)
    base = validated(ThreatModel, weight_ball=weight_ball, weight_mode=weight_mode, layers=layer_names(layers))
    # With --quantize the ray's weight direction is the grid: every rounding of the weights to it.
    work = load_workload(checkpoint, data, model, weights, base, n_examples, run_device, accept_data_change, spec)
    if work.grid is not None:
        for line in work.grid.lines():
            console.print(line, highlight=False)
    ray = Ray(settings.k_x, settings.k_w, work.threat, k_b=settings.k_b)
    ray.threat(min(settings.s_max, ray.s_max)).check_resolvable(work.model)

    def certify(a, b, t):  # as `certify` does: float64, no autograd graph, `batch_size` examples per bound
        return certified_mask(work.model, a, b, t, method, batch_size=batch_size)

    with progress_bar("attacked radius", total=2) as update:
        report = measure_radii(
            work.model, work.x, work.y, ray, chosen, certify, method.value, settings.s_max, settings.iterations, update
        )
    console.print(
        render_table(
            report,
            title=f"radius along (eps_x, {'grid radius' if spec else 'eps_w'}, eps_b) = "
            f"s ({settings.k_x:g}, {settings.k_w:g}, {settings.k_b:g}), {len(work.y)} examples of {work.name}",
        )
    )
    console.print(
        f"certified <= attacked for every example: {report.consistent}; took {report.seconds:.1f} s", highlight=False
    )
    payload = {**report.to_json(), **work.source_fields()}
    if work.grid is not None:
        at_grid = 1.0 / settings.k_w  # the s where the box is the grid
        certified = float((report.certified.radius >= at_grid).double().mean())
        broken = float((report.attacked.radius <= at_grid).double().mean())
        console.print(
            f"at the grid itself (s = {at_grid:g}): certified for every rounding {certified:.1%} of examples; "
            f"broken at or below it (a checked rounding error, or misclassified clean) {broken:.1%}",
            highlight=False,
        )
        payload["quantization"] = {
            **work.grid.describe(),
            "s_at_grid": at_grid,
            "certified_at_grid": certified,
            "attacked_at_grid": broken,
        }
    if out is not None:
        write_json(out, payload)
        console.print(f"wrote {out}")


def render_table(report: RadiusReport, title: str) -> Table:
    """Quantiles of the attacked (upper) and certified (lower) radii; the caption names attack and certificate."""
    table = Table(title=title, caption=f"attack: {report.attack}; certificate: {report.method}")
    table.add_column("bound")
    for q in (*QUANTILES, "censored"):
        table.add_column(q, justify="right")
    for label, which in (("attacked (upper)", "attacked"), ("certified (lower)", "certified")):
        result = report.attacked if which == "attacked" else report.certified
        qs = report.quantiles(which)
        table.add_row(label, *(f"{v:.4g}" for v in qs.values()), str(int(result.censored.sum())))
    return table
