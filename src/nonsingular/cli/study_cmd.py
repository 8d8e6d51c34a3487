"""`nonsingular study`: the paper's comparison as one reproducible, resumable command."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..runtime import distributed as dist
from ..runtime.locks import FileLock
from ..study.report import HEADLINE_COLUMNS, headline_stats, summarise
from ..study.runner import run_study
from ..study.schema import default_config_path, load_study_config, shipped_studies
from .common import DeviceOpt, UserError, console, err_console, progress_bar, resolve_device


def progress_lines(t0: float, every: float = 30.0) -> Callable[[str, int, int], None]:
    """A progress callback writing plain lines "[elapsed] stage done/total" to stderr: one when a stage starts
    or finishes, one per finished grid point, and at most one per `every` seconds within a stage. Stages are
    told apart by label, so workers whose ticks interleave do not print every tick."""
    last: dict[str, float] = {}

    def update(label: str, done: int, total: int) -> None:
        now = time.perf_counter()
        step = label.endswith(("attacks", "certificates"))  # one tick per grid point
        if label not in last or done >= total or step or now - last[label] >= every:
            print(f"[{now - t0:7.1f} s] {label} {done}/{total}", file=sys.stderr, flush=True)
            last[label] = now

    return update


def study(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help=f"Study file (.toml or .yaml) or a shipped study's name ({', '.join(shipped_studies())}) "
            f"[default: the shipped {default_config_path().name}].",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for results.json, CSVs, PNGs, report.html.")] = Path(
        "runs/study"
    ),
    cache: Annotated[
        Path, typer.Option("--cache", help="Folder of trained models, keyed by the hash of their settings.")
    ] = Path("runs/cache"),
    fresh: Annotated[
        bool, typer.Option("--fresh/--resume", help="Discard finished evaluations in --out instead of resuming.")
    ] = False,
    device: DeviceOpt = "auto",
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Processes that train and evaluate the (model, seed) units in parallel, each with its share of "
            "the CPUs as threads (e.g. 2 on a 2-core machine); not with torchrun.",
        ),
    ] = 1,
) -> None:
    """Train the comparison's models (or reuse them from the cache), attack them on the eps_x x eps_w grid in
    both scopes, certify them, measure per-example radii, and write the report.

    Interrupted studies resume where they stopped: finished pieces are kept in OUT/state.json.
    """
    cfg = load_study_config(config)
    run_device = resolve_device(device)
    dist.init_from_env(run_device)
    state = out / "state.json"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.exists() and any(p.name != ".lock" for p in out.iterdir()) and not state.exists():
        raise UserError(f"--out {out} is a non-empty folder that holds no study; choose another folder")
    # One study writes a folder at a time: a second one (or a --fresh one) refuses instead of mixing states.
    lock = FileLock(out / ".lock", f"study output folder {out}") if dist.rank() == 0 else nullcontext()
    with lock:
        if fresh and state.exists() and dist.rank() == 0:
            state.unlink()
        t0 = time.perf_counter()
        if err_console.is_terminal or dist.rank() != 0:
            with progress_bar("study", enabled=dist.rank() == 0) as update:
                report, results = run_study(
                    cfg,
                    out,
                    cache,
                    progress=lambda label, d, t: update(d, t, label),
                    device=run_device,
                    workers=workers,
                )
        else:  # a log file or pipe: plain lines a reader of the log can follow while the study runs
            report, results = run_study(
                cfg, out, cache, progress=progress_lines(t0), device=run_device, workers=workers
            )
    if dist.rank() != 0:
        return
    hx, hw = results["headline"]["eps_x"], results["headline"]["eps_w"]
    seeds = len(results["seeds"])
    spread = f", % mean±sd over {seeds} seeds" if seeds > 1 else ""
    table = Table(
        title=f"{cfg.name}: accuracy at eps_x={hx:g}, eps_w={hw:g} ({results['n_examples']} test examples{spread})"
    )
    table.add_column("model", no_wrap=True)
    short = {
        "input-only": "input",
        "weight-only": "weight",
        "joint per-example": "joint/ex",
        "joint shared": "joint/sh",
    }
    for column in HEADLINE_COLUMNS:
        table.add_column(short.get(column, column), justify="right", no_wrap=True)
    for name, _, stats in headline_stats(results):
        table.add_row(name, *(stats[c].text(compact=True) for c in HEADLINE_COLUMNS))
    console.print(table)
    for line in summarise(results):
        console.print(f"- {line}")
    console.print(f"study finished in {time.perf_counter() - t0:.1f} s")
    console.print(f"report: {report.resolve()}")
