"""`nonsingular study`: the paper's comparison as one reproducible, resumable command."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..formatting import percent
from ..runtime import distributed as dist
from ..runtime.executors import ExecutorKind, make_executor
from ..runtime.locks import FileLock
from ..study.report import HEADLINE_COLUMNS, headline_stats
from ..study.runner import run_study
from ..study.schema import default_config_path, load_study_config, shipped_studies
from ..study.selection import validation_choice
from ..study.verdicts import FLOOR, Comparison, Z, claim_comparisons
from . import options as opt
from .common import UserError, console, err_console, progress_bar, progress_lines, resolve_device


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
    device: opt.Device = "auto",
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Processes that train and evaluate the (model, seed) units in parallel, each with its share of "
            "the CPUs as threads (e.g. 2 on a 2-core machine); not with torchrun.",
        ),
    ] = 1,
    executor: Annotated[
        ExecutorKind,
        typer.Option(
            "--executor",
            help="Where the units run: local (this process, or --workers processes) or ray (a Ray cluster; "
            "needs pip install 'nonsingular[ray]'; see docs/distributed.md).",
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
    if executor is ExecutorKind.RAY and workers != 1:
        raise UserError("--workers sets the local executor's processes; Ray places units on the cluster's CPUs")
    # One study writes a folder at a time: a second one (or a --fresh one) refuses instead of mixing states.
    lock = FileLock(out / ".lock", f"study output folder {out}") if dist.rank() == 0 else nullcontext()
    with make_executor(executor, workers, ray_address) as runner, lock:  # a refused executor creates nothing
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
                    executor=runner,
                )
        else:  # a log file or pipe: plain lines a reader of the log can follow while the study runs
            report, results = run_study(
                cfg, out, cache, progress=progress_lines(t0), device=run_device, executor=runner
            )
    if dist.rank() != 0:
        return
    hx, hw = results.headline["eps_x"], results.headline["eps_w"]
    seeds = len(results.seeds)
    spread = f", % mean±sd over {seeds} seeds" if seeds > 1 else ""
    table = Table(
        title=f"{cfg.name}: accuracy at eps_x={hx:g}, eps_w={hw:g} ({results.n_examples} test examples{spread})"
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
    table.caption = f"attack: {results.headline_attack or results.attack}"
    console.print(table)
    grid_attack = results.attack + (f" (headline point: {results.headline_attack})" if results.headline_attack else "")
    print_claims(claim_comparisons(results), seeds, grid_attack)
    chosen = validation_choice(results)
    if chosen is not None:
        console.print(
            f"claim 2 rests on '{chosen.model}', selected on the validation split "
            f"({percent(chosen.mean_robust)} validation joint robust accuracy)"
        )
    console.print(f"study finished in {time.perf_counter() - t0:.1f} s")
    console.print(f"report: {report.resolve()}  (report.md: every verdict as a sentence with its per-seed numbers)")


def print_claims(comparisons: list[Comparison], seeds: int, attack: str) -> None:
    """The paper's claims judged, one row per comparison (report.md has each as a full sentence)."""
    if not comparisons:
        console.print("The study's models do not include the objectives the paper's claims compare.")
        return
    if seeds < 2:
        console.print(
            "One seed: the rule below needs each difference's spread over seeds, so every claim is undecided; "
            "give the study seeds = [0, 1, 2] to decide them."
        )
    console.print(claims_table(comparisons, attack))
    console.print(
        "Claim 1: input-AT (pgd-at) is as or more fragile to weight-only attacks than standard training. "
        "Claim 2: a bound-regularized model is more robust to joint attacks than its reference."
    )
    console.print(
        f"Decided when every seed's difference has the same sign ('seeds': how many share the mean's sign) and "
        f"|mean| > {Z:g} SE, else within the noise; cells where both models are below {100 * FLOOR:.0f}% are left "
        "out (no cells: none was left)."
    )


def claims_table(comparisons: list[Comparison], attack: str) -> Table:
    """claim x comparison x parametrization x scope -> verdict, mean difference ± standard error, seeds agreeing;
    the caption names the attack of the cells."""
    table = Table(
        title="claims: subject - reference accuracy in points, mean over the claim's cells", caption=f"attack: {attack}"
    )
    table.add_column("weight ball", min_width=11)
    table.add_column("claim", min_width=5)
    table.add_column("comparison", no_wrap=True)
    table.add_column("scope", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("mean ± SE", justify="right", no_wrap=True)
    table.add_column("seeds", justify="right", no_wrap=True)
    why = {"no cells": " (no cells)", "one seed": " (1 seed)"}
    for i, c in enumerate(comparisons):
        first = i == 0 or c.parametrization != comparisons[i - 1].parametrization
        if first and i > 0:
            table.add_section()
        table.add_row(
            (c.parametrization or "-") if first else "",
            str(c.claim),
            f"{c.subject} vs {c.reference}",
            c.scope,
            c.verdict.removesuffix(" (within noise)") + why.get(c.outcome, ""),
            c.mean_se_text(),
            f"{c.seeds_agreeing}/{len(c.per_seed)}" if c.per_seed else "-",
        )
    return table
