"""`nonsingular evaluate`: clean and robust accuracy under input-only, weight-only and joint attacks."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from .. import distributed as dist
from ..attacks import PGD, Loss
from ..evaluate import KINDS, SCOPES, RobustnessReport, evaluate_robustness
from ..quantize import QuantizationReport, Rounding, evaluate_quantization, quantization_threat, save_quantized
from ..threat import EpsMode, WeightBall
from .common import (
    AcceptDataOpt,
    BallOpt,
    CheckpointOpt,
    DataOpt,
    DeviceOpt,
    EpsBOpt,
    EpsWOpt,
    EpsXOpt,
    ForceOpt,
    JsonOutOpt,
    LayersOpt,
    ModelOpt,
    ModeOpt,
    NExamplesOpt,
    PerChannelOpt,
    QuantizeOpt,
    RoundingOpt,
    SymmetricOpt,
    UserError,
    WeightsOpt,
    check_writable,
    console,
    grid_lines,
    layer_names,
    make_threat,
    progress_bar,
    quantization_spec,
    resolve_device,
    validated,
    write_json,
)
from .loading import load_workload


def evaluate(
    checkpoint: CheckpointOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    eps_x: EpsXOpt = 0.0,
    eps_w: EpsWOpt = 0.0,
    weight_ball: BallOpt = WeightBall.ELEMENTWISE,
    weight_mode: ModeOpt = EpsMode.ABSOLUTE,
    eps_b: EpsBOpt = 0.0,
    layers: LayersOpt = None,
    data: DataOpt = None,
    accept_data_change: AcceptDataOpt = False,
    n_examples: NExamplesOpt = None,
    steps: Annotated[int, typer.Option(help="Attack gradient steps per restart.")] = 20,
    restarts: Annotated[int, typer.Option(help="Attack restarts; each example keeps its worst.")] = 1,
    step_size: Annotated[
        float | None,
        typer.Option("--step-size", help="Step per iteration as a fraction of each radius [default 2.5/steps]."),
    ] = None,
    loss: Annotated[Loss, typer.Option(help="Attack loss: ce (cross-entropy) or margin.")] = Loss.CE,
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 256,
    seed: Annotated[int, typer.Option(help="Random-start seed.")] = 0,
    quantize: QuantizeOpt = None,
    per_channel: PerChannelOpt = False,
    symmetric: SymmetricOpt = True,
    rounding: RoundingOpt = Rounding.NEAREST,
    export_worst: Annotated[
        Path | None,
        typer.Option(
            "--export-worst", help="With --quantize: write the shared worst-case rounding (int codes) as safetensors."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    out: JsonOutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Attack a checkpoint under input-only, weight-only and joint threats, per-example and shared scope.

    Every robust accuracy is verified: perturbations are checked against the threat set and predictions are
    recomputed by the ordinary module with the explicit perturbed weights.
    """
    check_writable(out, force)
    spec = quantization_spec(quantize, per_channel, symmetric, rounding, eps_w, weight_ball)
    if export_worst is not None:
        if spec is None:
            raise UserError("--export-worst goes with --quantize")
        check_writable(export_worst, force)
    threat = make_threat(eps_x, eps_w, weight_ball, weight_mode, eps_b, layers)
    attack = validated(
        PGD, steps=steps, restarts=restarts, rel_stepsize=step_size, loss=loss, batch_size=batch_size, seed=seed
    )
    run_device = resolve_device(device)
    dist.init_from_env(run_device)
    lead = dist.rank() == 0
    work = load_workload(checkpoint, data, model, weights, threat, n_examples, run_device, accept_data_change)
    grids = None
    if spec is not None:
        if dist.is_distributed():
            raise UserError("--quantize runs in one process (leave out torchrun)")
        quantized, grids = quantization_threat(work.model, spec, work.threat)
        quantized.check_resolvable(work.model)
        work = dataclasses.replace(work, threat=quantized)

    t0 = time.perf_counter()
    with progress_bar("attacking", enabled=lead) as update:
        report = evaluate_robustness(
            work.model, work.x, work.y, work.threat, attack, progress=lambda label, d, t: update(d, t, label)
        )
    elapsed = time.perf_counter() - t0
    if not lead:
        return
    if dist.is_distributed():
        console.print(f"{dist.world_size()} processes, each attacking a contiguous share of the batches")
    console.print(render_table(report, title=f"{work.name} on {work.data.name} ({len(work.y)} test examples)"))
    console.print(f"threat: {work.threat}    attack: {report.attack}")
    joint = report.cells["joint"]["per-example"] or report.cells["weight"]["per-example"]
    if joint is not None:
        paths = ", ".join(f"{layer}={path}" for layer, path in joint.paths.items())
        console.print(f"per-example weight paths: {paths} (shared scope: one perturbation for all inputs)")
    unverified = [(label, cell) for label, cell in report.labelled_cells() if not cell.verified]
    for label, cell in unverified:
        console.print(Text("unverified: ", style="red") + Text(f"{label}: {'; '.join(cell.problems)}"))
    checked = "every robust accuracy verified" if not unverified else f"{len(unverified)} cell(s) failed verification"
    console.print(f"evaluated in {elapsed:.2f} s; {checked} with explicit weights")
    payload = {**report.to_json(), **work.source_fields()}
    if spec is not None and grids is not None:
        for line in grid_lines(spec, grids):
            console.print(line)
        with progress_bar("quantized models", enabled=lead):
            quant = evaluate_quantization(
                work.model, work.x, work.y, spec, attack, eps_x, work.data.domain, layer_names(layers), seed=seed
            )
        console.print(render_quantization(quant))
        payload["quantization"] = quant.to_json()
        if export_worst is not None:
            save_quantized(export_worst, grids, quant.worst_codes, spec)
            console.print(f"wrote the shared worst-case rounding to {export_worst}")
    if out is not None:
        write_json(out, payload)
        console.print(f"wrote {out}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render_table(report: RobustnessReport, title: str) -> Table:
    table = Table(title=title)
    table.add_column("accuracy")
    for scope in SCOPES:
        table.add_column(scope, justify="right")
    table.add_row("clean", _fmt(report.clean_accuracy), _fmt(report.clean_accuracy))
    for kind in KINDS:
        row = []
        for scope in SCOPES:
            cell = report.cells[kind][scope]
            if cell is not None and not cell.verified:
                row.append(Text("unverified", style="red"))
            else:
                row.append(_fmt(None if cell is None else cell.accuracy))
        table.add_row(f"{kind}-only" if kind != "joint" else "joint", *row)
    return table


def render_quantization(report: QuantizationReport) -> Table:
    """Accuracy of the model's quantizations, one column per input radius."""
    radii = sorted({0.0, report.eps_x})
    table = Table(title=f"quantized to {report.spec.describe()} ({report.seconds:.1f} s)")
    table.add_column("model")
    for ex in radii:
        table.add_column(f"eps_x={ex:g}", justify="right")
    for label, row in report.rows.items():
        table.add_row(label, *(_fmt(row.get(ex)) for ex in radii))
    return table
