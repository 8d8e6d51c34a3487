"""`nonsingular evaluate`: clean and robust accuracy under input-only, weight-only and joint attacks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ..attacks import AttackKind, Loss
from ..bounds import BoundMethod
from ..deployment import (
    FaultSummary,
    QuantizationReport,
    Rounding,
    bit_flip_accuracies,
    evaluate_quantization,
    save_quantized,
    summarise,
    uniform_box_accuracies,
)
from ..evaluation import KINDS, SCOPES, RobustnessReport, evaluate_robustness
from ..formatting import percent
from ..runtime import distributed as dist
from ..threat import EpsMode, WeightBall
from . import options as opt
from .common import (
    UserError,
    build_attack,
    check_writable,
    console,
    layer_names,
    make_threat,
    progress_bar,
    quantization_spec,
    resolve_device,
    write_json,
)
from .loading import load_workload


def evaluate(
    checkpoint: opt.Checkpoint = None,
    model: opt.Model = None,
    weights: opt.Weights = None,
    eps_x: opt.EpsX = 0.0,
    eps_w: opt.EpsW = 0.0,
    weight_ball: opt.Ball = WeightBall.ELEMENTWISE,
    weight_mode: opt.Mode = EpsMode.ABSOLUTE,
    eps_b: opt.EpsB = 0.0,
    layers: opt.Layers = None,
    data: opt.Data = None,
    accept_data_change: opt.AcceptDataChange = False,
    n_examples: opt.NExamples = None,
    attack: opt.Attack = AttackKind.AUTO,
    steps: Annotated[
        int | None, typer.Option(help="Gradient steps per restart (per APGD run for auto) [default: auto 50, pgd 20].")
    ] = None,
    restarts: Annotated[int, typer.Option(help="Attack restarts; each example keeps its worst.")] = 1,
    step_size: Annotated[
        float | None,
        typer.Option("--step-size", help="pgd: step per iteration as a fraction of each radius [default 2.5/steps]."),
    ] = None,
    loss: Annotated[
        Loss, typer.Option(help="pgd: attack loss, ce (cross-entropy), margin, dlr or kl-clean.")
    ] = Loss.CE,
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 256,
    seed: Annotated[int, typer.Option(help="Random-start seed.")] = 0,
    quantize: opt.Quantize = None,
    per_channel: opt.PerChannel = False,
    symmetric: opt.Symmetric = True,
    rounding: opt.Rounding = Rounding.NEAREST,
    export_worst: Annotated[
        Path | None,
        typer.Option(
            "--export-worst", help="With --quantize: write the shared worst-case rounding (int codes) as safetensors."
        ),
    ] = None,
    certify_method: Annotated[
        str,
        typer.Option(
            "--certify-method",
            help="With --quantize: the bound of the certified row (ibp, crown, alpha-crown; none: no certificate).",
        ),
    ] = "crown",
    random_faults: Annotated[
        int,
        typer.Option(
            "--random-faults",
            help="N > 0: also draw N random shared faults (uniform in the threat's box; int8 bit flips at "
            "--fault-rate) and report their mean accuracy with its 95% interval next to the worst case.",
            min=0,
        ),
    ] = 0,
    fault_rate: Annotated[
        float, typer.Option("--fault-rate", help="Probability that each chosen bit of each int8 weight flips.")
    ] = 1e-3,
    fault_bits: Annotated[
        str, typer.Option("--fault-bits", help="Bits of the int8 code to flip, comma-separated (7: the sign bit).")
    ] = "7",
    device: opt.Device = "auto",
    out: opt.JsonOut = None,
    force: opt.Force = False,
) -> None:
    """Attack a checkpoint under input-only, weight-only and joint threats, per-example and shared scope.

    Every robust accuracy is checked: perturbations are checked against the threat set and predictions are
    recomputed by the ordinary module with the explicit perturbed weights.
    """
    check_writable(out, force)
    spec = quantization_spec(quantize, per_channel, symmetric, rounding, eps_w, weight_ball)
    bound = _certify_method(certify_method)
    if export_worst is not None:
        if spec is None:
            raise UserError("--export-worst goes with --quantize")
        check_writable(export_worst, force)
    flip_bits = _fault_bits(fault_bits, fault_rate) if random_faults else ()
    threat = make_threat(eps_x, eps_w, weight_ball, weight_mode, eps_b, layers)
    if random_faults and threat.weight_ball is not WeightBall.ELEMENTWISE:
        raise UserError("--random-faults draws from element-wise boxes; leave out --weight-ball operator")
    chosen = build_attack(
        attack, steps=steps, restarts=restarts, rel_stepsize=step_size, loss=loss, batch_size=batch_size, seed=seed
    )
    run_device = resolve_device(device)
    dist.init_from_env(run_device)
    lead = dist.rank() == 0
    if spec is not None and dist.is_distributed():
        raise UserError("--quantize runs in one process (leave out torchrun)")
    work = load_workload(checkpoint, data, model, weights, threat, n_examples, run_device, accept_data_change, spec)

    t0 = time.perf_counter()
    with progress_bar("attacking", enabled=lead) as update:
        report = evaluate_robustness(
            work.model, work.x, work.y, work.threat, chosen, progress=lambda label, d, t: update(d, t, label)
        )
    elapsed = time.perf_counter() - t0
    if not lead:
        return
    if dist.is_distributed():
        console.print(f"{dist.world_size()} processes, each attacking a contiguous share of the batches")
    console.print(render_table(report, title=f"{work.name} on {work.data.name} ({len(work.y)} test examples)"))
    console.print(f"threat: {work.threat}")
    joint = report.cells["joint"]["per-example"] or report.cells["weight"]["per-example"]
    if joint is not None:
        paths = ", ".join(f"{layer}={path}" for layer, path in joint.paths.items())
        console.print(f"per-example weight paths: {paths} (shared scope: one perturbation for all inputs)")
    unchecked = [(label, cell) for label, cell in report.labelled_cells() if not cell.checked]
    for label, cell in unchecked:
        console.print(Text("unchecked: ", style="red") + Text(f"{label}: {'; '.join(cell.problems)}"))
    checked = "every robust accuracy checked" if not unchecked else f"{len(unchecked)} cell(s) failed the check"
    console.print(f"evaluated in {elapsed:.2f} s; {checked} with explicit weights")
    for flag in report.flags:
        console.print(Text(f"sanity flag ({flag.check}): ", style="yellow") + Text(flag.message))
    if not report.flags:
        console.print("sanity checks (nested cells, random noise, gradients, train/eval mode): no flags")
    payload = {**report.to_json(), **work.source_fields()}
    if work.grid is not None:
        grid = work.grid
        for line in grid.lines():
            console.print(line)
        with progress_bar("quantized models", enabled=lead):
            quant = evaluate_quantization(
                work.model,
                work.x,
                work.y,
                grid.spec,
                chosen,
                eps_x,
                work.data.domain,
                layer_names(layers),
                certify_method=bound,
                seed=seed,
            )
        console.print(render_quantization(quant, report.attack))
        payload["quantization"] = quant.to_json()
        if export_worst is not None:
            save_quantized(export_worst, grid.layers, quant.worst_codes, grid.spec)
            console.print(f"wrote the shared worst-case rounding to {export_worst}")
    if random_faults:
        worst = report.cells["joint"]["shared"] or report.cells["weight"]["shared"] or report.cells["input"]["shared"]
        faults = {
            "uniform in the threat box": summarise(
                uniform_box_accuracies(work.model, work.x, work.y, work.threat, random_faults, seed)
            ),
            f"int8 bit flips (bits {','.join(map(str, flip_bits))}, rate {fault_rate:g})": summarise(
                bit_flip_accuracies(
                    work.model, work.x, work.y, fault_rate, flip_bits, random_faults, layer_names(layers), seed
                )
            ),
        }
        console.print(render_faults(faults, None if worst is None else worst.accuracy, random_faults, report.attack))
        payload["random_faults"] = {label: f.to_json() for label, f in faults.items()}
    if out is not None:
        write_json(out, payload)
        console.print(f"wrote {out}")


def _certify_method(text: str) -> str | None:
    """--certify-method as a BoundMethod value, or None for `none`; norm bounds no quantization box."""
    if text.strip().lower() == "none":
        return None
    allowed = [BoundMethod.IBP, BoundMethod.CROWN, BoundMethod.ALPHA_CROWN]
    try:
        method = BoundMethod(text.strip().lower())
    except ValueError:
        method = None
    if method not in allowed:
        raise UserError(f"--certify-method must be one of ibp, crown, alpha-crown, none; got {text!r}")
    return method.value


def render_table(report: RobustnessReport, title: str) -> Table:
    """Clean and checked robust accuracy per threat kind and scope; the caption names the attack behind them."""
    table = Table(title=title, caption=f"attack: {report.attack}")
    table.add_column("accuracy")
    for scope in SCOPES:
        table.add_column(scope, justify="right")
    table.add_row("clean", percent(report.clean_accuracy), percent(report.clean_accuracy))
    for kind in KINDS:
        row = []
        for scope in SCOPES:
            cell = report.cells[kind][scope]
            if cell is not None and not cell.checked:
                row.append(Text("unchecked", style="red"))
            else:
                row.append(percent(None if cell is None else cell.accuracy))
        table.add_row(f"{kind}-only" if kind != "joint" else "joint", *row)
    return table


def render_quantization(report: QuantizationReport, attack: str) -> Table:
    """Accuracy of the model's quantizations, one column per input radius; `attack` found the worst roundings."""
    radii = sorted({0.0, report.eps_x})
    table = Table(title=f"quantized to {report.spec.describe()} ({report.seconds:.1f} s)", caption=f"attack: {attack}")
    table.add_column("model")
    for ex in radii:
        table.add_column(f"eps_x={ex:g}", justify="right")
    for label, row in report.rows.items():
        table.add_row(label, *(percent(row.get(ex)) for ex in radii))
    return table


def _fault_bits(text: str, rate: float) -> tuple[int, ...]:
    try:
        bits = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise UserError(f"--fault-bits must be comma-separated bit positions 0..7, got {text!r}") from None
    if not bits or any(not 0 <= b <= 7 for b in bits):
        raise UserError(f"--fault-bits must be comma-separated bit positions 0..7, got {text!r}")
    if not 0 <= rate <= 1:
        raise UserError(f"--fault-rate must lie in [0, 1], got {rate}")
    return bits


def render_faults(faults: dict[str, FaultSummary], worst: float | None, draws: int, attack: str) -> Table:
    """Nature next to the adversary: random shared faults and the worst shared perturbation `attack` found."""
    table = Table(
        title=f"random faults ({draws} draws, one fault shared by all inputs) vs the worst case",
        caption=f"attack: {attack}",
    )
    for column in ("fault", "mean accuracy", "95% interval of the mean", "2.5%..97.5% of draws"):
        table.add_column(column, justify="left" if column == "fault" else "right")
    for label, f in faults.items():
        table.add_row(
            label,
            percent(f.mean),
            f"{percent(f.mean_low)}..{percent(f.mean_high)}",
            f"{percent(f.q025)}..{percent(f.q975)}",
        )
    table.add_row("worst case found by the attack (shared)", percent(worst), "-", "-")
    return table
