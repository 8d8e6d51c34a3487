"""`nonsingular certify`: certified accuracy per bound method, margin bounds and tightness against an attack."""

from __future__ import annotations

import time
from enum import Enum
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ..attacks import AttackKind
from ..bounds import DEFAULT_ALPHA_STEPS, DEFAULT_MEMORY_MB, BoundMethod, supported_methods
from ..deployment import Rounding
from ..evaluation import CertifyReport
from ..evaluation import certify as run_certify
from ..formatting import percent
from ..runtime import distributed as dist
from ..runtime.allocator import limit_heap_retention
from ..threat import EpsMode, WeightBall
from . import options as opt
from .common import (
    UserError,
    build_attack,
    check_writable,
    console,
    make_threat,
    progress_bar,
    quantization_spec,
    resolve_device,
    write_json,
)
from .loading import load_workload


class AlphaSlopes(str, Enum):
    """Which ReLU slopes alpha-CROWN optimises."""

    ALL = "all"
    FINAL = "final"


def parse_methods(values: list[str]) -> list[BoundMethod]:
    """--method values (repeatable, comma-separated, or 'all') to methods in a fixed order, no repeats."""
    names: set[str] = set()
    for value in values:
        for part in value.split(","):
            part = part.strip().lower()
            if part == "all":
                names.update(m.value for m in BoundMethod)
            elif part in {m.value for m in BoundMethod}:
                names.add(part)
            elif part:
                choices = ", ".join([*(m.value for m in BoundMethod), "all"])
                raise UserError(f"--method must be one of {choices}, got {part!r}")
    if not names:
        raise UserError("--method names no method")
    return [m for m in BoundMethod if m.value in names]


def certify(
    checkpoint: opt.Checkpoint = None,
    model: opt.Model = None,
    weights: opt.Weights = None,
    eps_x: opt.EpsX = 0.0,
    eps_w: opt.EpsW = 0.0,
    weight_ball: opt.Ball = WeightBall.ELEMENTWISE,
    weight_mode: opt.Mode = EpsMode.ABSOLUTE,
    eps_b: opt.EpsB = 0.0,
    layers: opt.Layers = None,
    method: Annotated[
        list[str],
        typer.Option(
            "--method",
            "-m",
            help="norm, ibp, crown, alpha-crown or all (every method the model supports); repeat the option or "
            "separate by commas.",
        ),
    ] = ["all"],  # noqa: B006 - typer reads the default, nothing mutates it
    data: opt.Data = None,
    accept_data_change: opt.AcceptDataChange = False,
    n_examples: opt.NExamples = None,
    attack: opt.Attack = AttackKind.AUTO,
    steps: Annotated[
        int | None,
        typer.Option(help="Attack steps for the attacked accuracy and tightness (0: no attack) [default: 50]."),
    ] = None,
    restarts: Annotated[int, typer.Option(help="Attack restarts; each example keeps its worst.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Examples per bound computation and attack batch.")] = 256,
    seed: Annotated[int, typer.Option(help="Attack random-start seed.")] = 0,
    quantize: opt.Quantize = None,
    per_channel: opt.PerChannel = False,
    symmetric: opt.Symmetric = True,
    rounding: opt.Rounding = Rounding.NEAREST,
    alpha_steps: Annotated[
        int, typer.Option(help="alpha-crown: projected gradient steps on the ReLU slopes per batch.")
    ] = DEFAULT_ALPHA_STEPS,
    alpha_slopes: Annotated[
        AlphaSlopes,
        typer.Option(
            "--alpha-slopes",
            help="alpha-crown: all (optimise every backward pass's ReLU slopes; each step recomputes every "
            "intermediate bound; tighter) or final (only the final margins' slopes on CROWN's intermediate "
            "bounds, auto_LiRPA's default; one backward pass per step).",
        ),
    ] = AlphaSlopes.ALL,
    memory_mb: Annotated[
        float,
        typer.Option(
            "--bound-memory-mb",
            help="crown / alpha-crown: MiB budget for one chunk's coefficient tensors (alpha-crown's autograd graph, "
            "about 0.55 GB per small-CNN example, comes on top; see --release-memory; BENCHMARKS.md).",
        ),
    ] = DEFAULT_MEMORY_MB,
    release_memory: Annotated[
        bool,
        typer.Option(
            "--release-memory/--keep-memory",
            help="Return memory the bounds free to the system at once (glibc: a fixed 1 MiB mmap threshold), so "
            "that peak RSS follows --bound-memory-mb, at up to 2x the CPU time on CNNs; --keep-memory lets the C "
            "heap keep freed blocks (faster; several times the budget). MALLOC_MMAP_THRESHOLD_, if set, wins.",
        ),
    ] = True,
    device: opt.Device = "auto",
    out: opt.JsonOut = None,
    force: opt.Force = False,
) -> None:
    """Certify a checkpoint: per bound method the certified accuracy (a lower bound on robust accuracy), the
    distribution of margin lower bounds, and the tightness ratio (bound on the loss increase / the largest loss
    increase a checked attack found). Bounds are per example and computed in float64.
    """
    check_writable(out, force)
    spec = quantization_spec(quantize, per_channel, symmetric, rounding, eps_w, weight_ball)
    methods = parse_methods(method)
    steps = 50 if steps is None else steps
    if steps < 0 or restarts < 1 or batch_size < 1:
        raise UserError("--steps must be >= 0, --restarts and --batch-size >= 1")
    if alpha_steps < 0 or not memory_mb > 0 or memory_mb == float("inf"):
        raise UserError(
            f"--alpha-steps must be >= 0 and --bound-memory-mb a positive number (got {alpha_steps}, {memory_mb})"
        )
    # Without it glibc's heap keeps the freed coefficient chunks and RSS outgrows --bound-memory-mb many times
    # over (runtime/allocator.py); set before the workload is loaded so that every bound pass runs under it.
    if release_memory:
        limit_heap_retention()
    threat = make_threat(eps_x, eps_w, weight_ball, weight_mode, eps_b, layers)
    chosen = None
    if steps > 0:
        chosen = build_attack(attack, steps=steps, restarts=restarts, batch_size=batch_size, seed=seed)
    run_device = resolve_device(device)
    dist.init_from_env(run_device)
    lead = dist.rank() == 0
    work = load_workload(checkpoint, data, model, weights, threat, n_examples, run_device, accept_data_change, spec)
    if any(part.strip().lower() == "all" for value in method for part in value.split(",")):
        supported = supported_methods(work.model, work.x, work.threat)
        skipped = [m.value for m in methods if m not in supported]
        methods = [m for m in methods if m in supported]
        if skipped and lead:
            console.print(f"methods for this model: {', '.join(m.value for m in methods)} (not {', '.join(skipped)})")

    t0 = time.perf_counter()
    with progress_bar("certifying", enabled=lead) as update:
        report = run_certify(
            work.model,
            work.x,
            work.y,
            work.threat,
            methods,
            chosen,
            batch_size,
            progress=lambda label, d, t: update(d, t, label),
            alpha_steps=alpha_steps,
            alpha_final_only=alpha_slopes is AlphaSlopes.FINAL,
            memory_mb=memory_mb,
        )
    elapsed = time.perf_counter() - t0
    if not lead:
        return
    if dist.is_distributed():
        console.print(f"{dist.world_size()} processes, each bounding and attacking a contiguous share of the batches")
    console.print(render_table(report, title=f"{work.name} on {work.data.name} ({len(work.y)} test examples)"))
    console.print(f"threat: {work.threat}")
    if work.grid is not None:
        for line in work.grid.lines():
            console.print(line)
        what = "any rounding to" if work.grid.spec.rounding is Rounding.ANY else "round-to-nearest onto"
        console.print(f"certified: no {what} this grid, with eps_x={work.threat.eps_x:g} input noise, changes them")
    removed = {name: res.removed_by_rounding for name, res in report.methods.items()}
    console.print(
        f"rounding: certificates hold for the model executed in {report.execution}; "
        + ", ".join(f"{name} {n}" for name, n in removed.items())
        + " removed because their margin is below the execution's floating-point error"
    )
    for problem in report.problems:
        console.print(Text("problem: ", style="red") + Text(problem))
    console.print(f"certified in {elapsed:.2f} s")
    if out is not None:
        payload = {**report.to_json(), **work.source_fields()}
        if work.grid is not None:
            payload["quantization"] = work.grid.describe()
        write_json(out, payload)
        console.print(f"wrote {out}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def render_table(report: CertifyReport, title: str) -> Table:
    """Accuracy per row (clean, attacked upper bound, certified lower bound per method), margin lower bound
    quantiles and tightness ratios (median over examples, and mean bound / mean attack increase); the caption
    names the attack behind the upper bound and the tightness."""
    table = Table(title=title, caption=f"attack: {report.attack or 'none'}")
    table.add_column("")
    for name in ("accuracy", "margin lb p5", "p50", "p95", "tight med", "tight mean", "s"):
        table.add_column(name, justify="right")
    table.add_row("clean", percent(report.clean_accuracy), *["-"] * 6)
    if report.attacked_accuracy is not None:
        table.add_row("attack (upper)", percent(report.attacked_accuracy), *["-"] * 6)
    for name, res in report.methods.items():
        q, tight = res.margin_quantiles, res.tightness
        table.add_row(
            Text(name) + (Text(" (broken!)", style="red") if res.broken else Text("")),
            percent(res.certified_accuracy),
            _num(q["5%"]),
            _num(q["50%"]),
            _num(q["95%"]),
            _num(tight.median if tight else None),
            _num(tight.of_means if tight else None),
            f"{res.seconds:.1f}",
        )
    return table
