"""`nonsingular verify --instances`: run a VNN-COMP instances CSV, resumable, one row per instance.

The instances CSV has one instance per line: onnx path, vnnlib path, timeout in seconds, paths relative to the
root folder (default: the CSV's own folder). A path must stay inside the root (no absolute paths, no `..` out of
it; the folder a benchmark is unpacked in is all the runner reads), and `X` that does not exist is read as
`X.gz` when that exists (VNN-COMP ships gzipped files under their plain names). Every problem is a one-line
InputError naming the CSV line.

Each instance is one unit of work (`runtime.executors`): by default they run one after another in this process
(each still in a worker process of its own, stopped at its timeout: `run_isolated`), with `--workers N` in N
processes, with `--executor ray` as Ray tasks on a cluster. The units return their results to the driver, which
alone writes the files below, in the order the instances finish; the rows it returns (and the summary) keep the
CSV's order.

Results: `out` gets one CSV row per finished instance (onnx, vnnlib, result, seconds[, eps_w_proven,
eps_w_open, eps_w_proven_bounds, eps_w_open_bounds, eps_w_refuted]: the joint column's brackets, radius.py),
appended with one write and fsync each, so a kill loses at most the instance that was running; a
rerun keeps the complete rows, drops a torn last line, and skips the instances already in the file. Each result
file (the VNN-COMP text with any counterexample) goes to the folder `<out stem>_results/` beside it.

Stops: under `runtime.signals.stop_on_signals` (the CLI's), a SIGINT/SIGTERM ends the running instance's worker
within a fraction of a second (`run_isolated`), writes no row for it, and raises `Stopped` between rows; the same
command resumes, skipping the finished rows.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import InputError
from ..runtime.executors import (
    Executor,
    InlineExecutor,
    Outbox,
    ProgressLine,
    Resources,
    Unit,
    report_units,
    run_units,
)
from ..runtime.files import atomic_write, make_folder
from ..runtime.signals import check_stop
from .instance import VerifyOptions, run_isolated
from .result import Status, VerificationResult, write_result

__all__ = [
    "COLUMNS",
    "Instance",
    "ResultRow",
    "instance_memory",
    "read_instances",
    "read_results",
    "run_campaign",
    "summarise",
]

COLUMNS = ["onnx", "vnnlib", "result", "seconds"]
#: The final bracket (branch and bound's, or the bounds' with --max-eps-w-method bounds), the bounds' alone, and
#: the smallest radius with a joint counterexample (empty: none found).
JOINT_COLUMNS = ["eps_w_proven", "eps_w_open", "eps_w_proven_bounds", "eps_w_open_bounds", "eps_w_refuted"]
#: Most instances one CSV may list (VNN-COMP benchmarks have at most a few hundred).
MAX_INSTANCES = 100_000
#: Bytes an instance declares to a scheduler beyond its model: torch, onnxruntime and the bound engine's
#: workspace for small networks (a worker deciding a tiny MLP peaks at about 0.5 GiB).
INSTANCE_BASE_MEMORY = 2**30
#: Bytes declared per byte of the ONNX file: the weights as float64 tensors (x 2), the onnxruntime session's
#: copy, and CROWN's back-substituted matrices, which grow with the weights.
INSTANCE_MEMORY_PER_BYTE = 16


@dataclass(frozen=True)
class Instance:
    """One line of the instances CSV: paths as written (relative to the root) and as resolved."""

    onnx: str
    vnnlib: str
    timeout: float
    onnx_path: Path
    vnnlib_path: Path
    line: int


@dataclass(frozen=True)
class ResultRow:
    onnx: str
    vnnlib: str
    result: str
    seconds: float
    eps_w_proven: float | None = None
    eps_w_open: float | None = None
    eps_w_proven_bounds: float | None = None
    eps_w_open_bounds: float | None = None
    eps_w_refuted: float | None = None

    def joint_values(self) -> list[float | None]:
        return [getattr(self, name) for name in JOINT_COLUMNS]


def _inside(root: Path, text: str, where: str) -> Path:
    rel = PurePosixPath(text.replace("\\", "/"))
    if not text or rel.is_absolute() or text.startswith("~"):
        raise InputError(f"{where}: path '{text}' must be relative to the root folder")
    path = (root / rel).resolve()
    if path != root and root not in path.parents:
        raise InputError(f"{where}: path '{text}' leads outside the root folder {root}")
    if not path.exists():
        gz = path.with_name(path.name + ".gz")
        if gz.exists():
            path = gz
        else:
            raise InputError(f"{where}: '{text}' does not exist under {root} (nor as .gz)")
    if not path.is_file():
        raise InputError(f"{where}: '{text}' is not a regular file")
    return path


def read_instances(csv_path: str | Path, root: str | Path | None = None) -> list[Instance]:
    """The instances of a VNN-COMP CSV, every path checked (see the module docstring).

    Raises:
        InputError: naming the CSV line; OSError: the CSV cannot be read.
    """
    csv_path = Path(csv_path)
    base = Path(root) if root is not None else csv_path.parent
    if not base.is_dir():
        raise InputError(f"--root {base} is not a folder")
    base = base.resolve()
    raw = csv_path.read_bytes()
    if len(raw) > 64 * 2**20:
        raise InputError(f"{csv_path}: more than 64 MiB; not an instances CSV")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{csv_path}: not UTF-8 text") from None
    out: list[Instance] = []
    for number, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
        where = f"{csv_path}:{number}"
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != 3:
            raise InputError(f"{where}: expected 3 fields (onnx, vnnlib, timeout), got {len(fields)}")
        onnx, vnnlib, timeout_text = (f.strip() for f in fields)
        try:
            timeout = float(timeout_text)
        except ValueError:
            raise InputError(f"{where}: timeout '{timeout_text[:40]}' is not a number") from None
        if not (math.isfinite(timeout) and timeout > 0):
            raise InputError(f"{where}: timeout must be a positive number of seconds, got {timeout_text[:40]}")
        out.append(Instance(onnx, vnnlib, timeout, _inside(base, onnx, where), _inside(base, vnnlib, where), number))
        if len(out) > MAX_INSTANCES:
            raise InputError(f"{csv_path}: more than {MAX_INSTANCES} instances")
    if not out:
        raise InputError(f"{csv_path}: no instance")
    return out


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_results(path: str | Path) -> list[ResultRow]:
    """The complete rows of a results CSV (a torn last line, from a kill, is dropped; [] if there is no file).

    Raises:
        InputError: the file is not a results CSV of this runner (its header differs).
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    rows = list(csv.reader(lines))
    if not rows:
        return []
    if rows[0][:4] != COLUMNS:
        raise InputError(f"{path} exists and is not a results CSV (header {rows[0][:4]}); choose another --out")
    out = []
    statuses = {s.value for s in Status}
    for fields in rows[1:]:
        if len(fields) < 4 or fields[2] not in statuses or _float(fields[3]) is None:
            continue
        extra = [_float(f) for f in fields[4 : 4 + len(JOINT_COLUMNS)]]
        extra += [None] * (len(JOINT_COLUMNS) - len(extra))
        out.append(ResultRow(fields[0], fields[1], fields[2], float(fields[3]), *extra))
    return out


def _row_text(row: ResultRow, joint: bool) -> str:
    buf = io.StringIO()
    values: list[object] = [row.onnx, row.vnnlib, row.result, f"{row.seconds:.3f}"]
    if joint:
        values += ["" if v is None else repr(v) for v in row.joint_values()]
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def _append(path: Path, text: str) -> None:
    """One write of a whole line, then fsync: a kill leaves the line whole or absent (or torn at worst, which
    `read_results` drops)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def result_file(out: Path, index: int, inst: Instance) -> Path:
    stem = f"{index:04d}_{Path(inst.onnx).name.split('.')[0]}_{Path(inst.vnnlib).name.split('.')[0]}.txt"
    return out.with_name(out.stem + "_results") / stem


Runner = Callable[[Path, Path, float, VerifyOptions], VerificationResult]
Progress = Callable[[int, int, Instance, VerificationResult], None]


def instance_memory(inst: Instance) -> int:
    """Bytes of memory the instance declares to a scheduler: INSTANCE_BASE_MEMORY + INSTANCE_MEMORY_PER_BYTE x
    the ONNX file's size (gzipped files count compressed: weights barely compress)."""
    return INSTANCE_BASE_MEMORY + INSTANCE_MEMORY_PER_BYTE * inst.onnx_path.stat().st_size


def decide(
    outbox: Outbox, runner: Runner, onnx: Path, vnnlib: Path, timeout: float, options: VerifyOptions
) -> VerificationResult:
    """One instance as a unit (where the executor runs it): the runner's result goes back to the driver, which
    records it; the unit writes nothing itself."""
    return runner(onnx, vnnlib, timeout, options)


def run_campaign(
    instances: list[Instance],
    out: str | Path,
    options: VerifyOptions | None = None,
    *,
    runner: Runner = run_isolated,
    progress: Progress | None = None,
    joint: bool = False,
    executor: Executor | None = None,
    units_progress: ProgressLine | None = None,
) -> list[ResultRow]:
    """Run every instance not already in `out`; returns all rows (kept and new), in the CSV's order.

    Args:
        instances: from `read_instances`.
        out: the results CSV (created, or resumed).
        options: verification options for every instance.
        runner: how one instance runs (default: in a worker process stopped at its timeout); a module-level
            function for executors that run units in other processes.
        progress: progress(index, total, instance, result) after each instance, in the order they finish.
        joint: add the eps_w bracket columns JOINT_COLUMNS (with options that ask for --max-eps-w).
        executor: where the instances run (default: one after another in this process); each declares
            options.threads CPUs and `instance_memory` bytes.
        units_progress: the study's progress line for the instances still to run, units_progress('units (2
            running, 3 queued; node-a: 1, node-b: 1)', done, total), whenever instances start or finish.

    Raises:
        Stopped: a stop request; the rows written so far are complete, the running instance has none.
    """
    options = options or VerifyOptions()
    out = Path(out)
    kept = read_results(out)
    header = COLUMNS + (JOINT_COLUMNS if joint else [])
    text = ",".join(header) + "\n" + "".join(_row_text(r, joint) for r in kept)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))  # drops a torn last line
    done = Counter((r.onnx, r.vnnlib) for r in kept)
    rows_by_key: dict[tuple[str, str], list[ResultRow]] = {}
    for r in kept:
        rows_by_key.setdefault((r.onnx, r.vnnlib), []).append(r)
    make_folder(out.with_name(out.stem + "_results"))
    seen: Counter[tuple[str, str]] = Counter()
    rows: dict[int, ResultRow] = {}
    units: list[Unit] = []
    todo: dict[str, int] = {}  # unit name -> instance index
    for index, inst in enumerate(instances):
        key = (inst.onnx, inst.vnnlib)
        seen[key] += 1
        if seen[key] <= done[key]:
            rows[index] = rows_by_key[key][seen[key] - 1]
            continue
        name = f"instance {index + 1}: {inst.onnx} {inst.vnnlib}"
        todo[name] = index
        resources = Resources(cpus=float(options.threads), memory=instance_memory(inst))
        args = (runner, inst.onnx_path, inst.vnnlib_path, inst.timeout, options)
        units.append(Unit(name, decide, args, resources=resources))

    def record(name: str, result: VerificationResult) -> None:
        index = todo[name]
        inst = instances[index]
        write_result(result_file(out, index, inst), result)
        joint_values = [result.stats.get(name) for name in JOINT_COLUMNS]
        row = ResultRow(inst.onnx, inst.vnnlib, result.status.value, result.seconds, *joint_values)
        _append(out, _row_text(row, joint))
        rows[index] = row
        if progress is not None:
            progress(index, len(instances), inst, result)

    if units:  # the caller's executor stays open (the caller closes it); an own one is closed here
        on_progress = report_units(units_progress) if units_progress is not None else None
        with ExitStack() as own:
            runs = executor if executor is not None else own.enter_context(InlineExecutor())
            run_units(runs, units, _ignore, on_result=record, on_progress=on_progress, between=check_stop, keep=_none)
    return [rows[index] for index in range(len(instances))]


def _ignore(unit: str, message: object) -> None:
    """Instances send no messages: their rows come with their results."""


def _none(unit: str) -> bool:
    """No instance's result is kept by `run_units`: `record` writes each one as it arrives."""
    return False


def summarise(rows: list[ResultRow]) -> dict[str, Counter[str]]:
    """Counts of each result, per network (the onnx file's name) and over all rows ('all')."""
    table: dict[str, Counter[str]] = {"all": Counter()}
    for r in rows:
        net = Path(r.onnx).name
        table.setdefault(net, Counter())[r.result] += 1
        table["all"][r.result] += 1
    return table
