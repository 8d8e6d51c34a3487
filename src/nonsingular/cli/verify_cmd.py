"""`nonsingular verify`: decide a VNN-COMP instance (ONNX model + VNNLIB property), or a whole instances CSV.

Exit status: 0 when an answer was written (unsat, sat, timeout or unknown: read the result file or stdout);
2 for bad input (a missing or malformed file, a bad option: one line on stderr, and `error` in the result file
when --out is given); 1 for an internal error. The campaign exits 0 when every instance ran (instances that hit
bad input are rows with the result `error`, their message on stderr); 130 (SIGINT) or 143 (SIGTERM) when a
signal stopped it (cli/stopping.py: one line naming the rows kept and the command that resumes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..bounds import BoundMethod
from ..errors import describe
from ..runtime.executors import Executor, ExecutorKind, ProgressLine, make_executor
from ..runtime.signals import check_stop
from ..threat import EpsMode, WeightBall
from ..verification.campaign import Instance, ResultRow, read_instances, run_campaign, summarise
from ..verification.instance import VerifyOptions, run_isolated
from ..verification.radius import RadiusMethod
from ..verification.result import Status, VerificationResult, format_result, write_result
from . import options as opt
from .common import UserError, console, err_console, layer_names, progress_bar, progress_lines

_DEFAULTS = VerifyOptions()
_METHODS = ",".join(m.value for m in _DEFAULTS.methods)


def _methods(text: str) -> tuple[BoundMethod, ...]:
    out = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        try:
            method = BoundMethod(name)
        except ValueError:
            raise UserError(f"--method: unknown bound method {name!r}; choose from ibp, crown, alpha-crown") from None
        if method is BoundMethod.NORM:
            raise UserError("--method: the norm bound speaks of margins only; choose from ibp, crown, alpha-crown")
        out.append(method)
    if not out:
        raise UserError("--method: give at least one of ibp, crown, alpha-crown")
    return tuple(out)


def _summary(rows_table: Mapping[str, Mapping[str, int]]) -> Table:
    statuses = [s.value for s in Status]
    table = Table(title="results per network")
    table.add_column("network")
    for s in statuses:
        table.add_column(s, justify="right")
    for net, counts in rows_table.items():
        if net != "all":
            table.add_row(net, *(str(counts.get(s, 0)) for s in statuses))
    table.add_row("all", *(str(rows_table["all"].get(s, 0)) for s in statuses))
    return table


def verify(
    model: Annotated[
        Path | None, typer.Argument(metavar="MODEL.onnx", help="The ONNX model (.onnx or .onnx.gz).")
    ] = None,
    prop: Annotated[
        Path | None, typer.Argument(metavar="PROPERTY.vnnlib", help="The VNNLIB property (.vnnlib or .vnnlib.gz).")
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", help="Wall-clock limit for one instance, seconds (hard: the answer is `timeout`)."),
    ] = 300.0,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="One instance: the VNN-COMP result file (default: print it). --instances: the results CSV (onnx, "
            "vnnlib, result, seconds), resumed if it exists.",
        ),
    ] = None,
    instances: Annotated[
        Path | None, typer.Option("--instances", help="A VNN-COMP instances CSV (onnx, vnnlib, timeout per line).")
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root", help="Folder the CSV's paths are relative to, and must stay inside [default: the CSV's folder]."
        ),
    ] = None,
    eps_w: Annotated[
        float,
        typer.Option(
            "--eps-w",
            help="Joint property: also every weight within this radius (elementwise: |D_ij| <= eps_w, absolute "
            "weight units, or eps_w |W_ij| relative). 0: the weights are exact.",
        ),
    ] = 0.0,
    weight_mode: opt.Mode = EpsMode.ABSOLUTE,
    weight_ball: opt.Ball = WeightBall.ELEMENTWISE,
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers",
            help="Comma-separated module names of the imported model to perturb [default: every Linear/Conv].",
        ),
    ] = None,
    max_eps_w: Annotated[
        bool,
        typer.Option(
            "--max-eps-w/--no-max-eps-w",
            help="After an unsat, bisect the largest eps_w (in --weight-mode units) still proven: by the bounds "
            "alone, then with branch and bound (see --max-eps-w-method); report both brackets.",
        ),
    ] = False,
    max_eps_w_timeout: Annotated[
        float | None,
        typer.Option(
            "--max-eps-w-timeout",
            metavar="SECONDS",
            help="Wall-clock seconds of the --max-eps-w bisection, on top of the answer's time (the answer keeps "
            "--timeout, and its reported seconds are the answer's) [default: the instance's timeout].",
        ),
    ] = None,
    max_eps_w_method: Annotated[
        RadiusMethod,
        typer.Option(
            "--max-eps-w-method",
            help="The --max-eps-w bisection: bounds (IBP/CROWN/alpha-CROWN only) or bab (the bounds' radius, then "
            "branch and bound on what they leave open; reports both).",
        ),
    ] = _DEFAULTS.max_eps_w_method,
    export_worst: Annotated[
        Path | None,
        typer.Option(
            "--export-worst", help="A joint sat: write the ONNX model with the counterexample's perturbed weights here."
        ),
    ] = None,
    method: Annotated[str, typer.Option("--method", help="Bound methods tried in turn, comma-separated.")] = _METHODS,
    seed: Annotated[int, typer.Option(help="Attack random-start seed.")] = 0,
    threads: Annotated[int, typer.Option(help="torch threads of the worker process.")] = 1,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="--instances: instances decided at once, each in its own process with --threads threads (local "
            "executor).",
        ),
    ] = 1,
    executor: Annotated[
        ExecutorKind,
        typer.Option(
            "--executor",
            help="--instances: where the instances run: local (this machine, --workers at once) or ray (Ray tasks "
            "on a cluster, each declaring --threads CPUs; needs pip install 'nonsingular[ray]'; see "
            "docs/distributed.md).",
        ),
    ] = ExecutorKind.LOCAL,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="With --executor ray: the cluster to join, 'auto' (the one started on this machine with `ray "
            "start`) or HOST:PORT; without it a local Ray is started for this run.",
        ),
    ] = None,
) -> None:
    """Decide a VNNLIB property on an ONNX model (unsat = verified), or run a VNN-COMP instances CSV.

    Exit status: 0 an answer was written (unsat, sat, timeout or unknown); 2 bad input (one line on stderr,
    `error` in the result file); 1 internal error. See docs/verification.md.
    """
    if not (math.isfinite(timeout) and timeout > 0):
        raise UserError(f"--timeout must be a positive number of seconds, got {timeout}")
    if not (math.isfinite(eps_w) and eps_w >= 0):
        raise UserError(f"--eps-w must be a finite number >= 0, got {eps_w}")
    if max_eps_w_timeout is not None and not (math.isfinite(max_eps_w_timeout) and max_eps_w_timeout > 0):
        raise UserError(f"--max-eps-w-timeout must be a positive number of seconds, got {max_eps_w_timeout}")
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if executor is ExecutorKind.RAY and workers != 1:
        raise UserError("--workers sets the local executor's processes; Ray places instances on the cluster's CPUs")
    names = layer_names(layers)
    options = VerifyOptions(
        eps_w=eps_w,
        weight_mode=weight_mode,
        weight_ball=weight_ball,
        layers=tuple(names) if names else None,
        methods=_methods(method),
        seed=seed,
        threads=threads,
        max_eps_w=max_eps_w,
        max_eps_w_timeout=max_eps_w_timeout,
        max_eps_w_method=max_eps_w_method,
        export_worst=export_worst,
    )
    options.threat()  # validates the weight options once, before any instance runs
    if instances is not None:
        if model is not None or prop is not None:
            raise UserError("give either MODEL PROPERTY or --instances, not both")
        if out is None:
            raise UserError("--instances needs --out RESULTS.csv")
        if export_worst is not None:
            raise UserError("--export-worst applies to one instance, not to --instances")
        todo = read_instances(instances, root)  # a bad CSV is refused before any executor starts
        with make_executor(executor, workers, ray_address) as runner:
            _campaign(todo, out, options, runner)
        return
    if model is None or prop is None:
        raise UserError("give MODEL.onnx PROPERTY.vnnlib, or --instances CSV")
    if root is not None:
        raise UserError("--root applies to --instances only")
    if workers != 1 or executor is not ExecutorKind.LOCAL or ray_address is not None:
        raise UserError("--workers, --executor and --ray-address apply to --instances only")
    result = run_isolated(model, prop, timeout, options)
    check_stop()  # a stop that came with the answer: --out keeps its previous content
    if out is not None:
        write_result(out, result)
    if result.status is Status.ERROR:
        raise UserError(result.message)
    _report(result, out)


def _report(result: VerificationResult, out: Path | None) -> None:
    line = f"{result.status.value} in {result.seconds:.2f} s"
    if result.decided_by:
        line += f" (by {result.decided_by})"
    stats = result.stats
    if "eps_w_proven" in stats:
        line += f"; eps_w proven up to {stats['eps_w_proven']:.4g}, not proven at {stats['eps_w_open']:.4g}"
        if "eps_w_seconds_bab" in stats:
            line += (
                f" (bounds alone: {stats['eps_w_proven_bounds']:.4g} / {stats['eps_w_open_bounds']:.4g} in "
                f"{stats['eps_w_seconds_bounds']:.1f} s; branch and bound {stats['eps_w_seconds_bab']:.1f} s)"
            )
        if "eps_w_refuted" in stats:
            line += f"; a joint counterexample at eps_w {stats['eps_w_refuted']:.4g}"
        if "eps_w_seconds" not in stats:
            line += "; bisection stopped at its time limit"
    if result.message:
        line += f"; {result.message}"
    err_console.print(line)
    if out is None:
        console.print(format_result(result), end="")


def _campaign(todo: list[Instance], out: Path, options: VerifyOptions, executor: Executor) -> None:
    """The campaign with a study's progress: the units line (running, queued, per node when on several) as a
    bar on a terminal or plain lines in a log, and one line per finished instance with its answer."""

    def progress(index: int, total: int, inst: Instance, result: VerificationResult) -> None:
        text = f"[{index + 1}/{total}] {inst.onnx} {inst.vnnlib}: {result.status.value} {result.seconds:.1f} s"
        err_console.print(text + (f" ({describe(ValueError(result.message))})" if result.message else ""))

    def run(units: ProgressLine) -> list[ResultRow]:
        return run_campaign(
            todo, out, options, progress=progress, joint=options.max_eps_w, executor=executor, units_progress=units
        )

    if err_console.is_terminal:
        with progress_bar("instances") as update:
            rows = run(lambda label, d, t: update(d, t, label))
    else:
        rows = run(progress_lines(time.perf_counter()))
    console.print(_summary(summarise(rows)))
