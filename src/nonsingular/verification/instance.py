"""One VNN-COMP instance: an ONNX file and a VNNLIB file (either possibly gzipped) -> a VerificationResult.

`run_instance` works in the calling process (the clock is checked between steps); `run_isolated` runs it in a
worker process and stops that process at the deadline, so `timeout` arrives within a fraction of a second of the
limit whatever the worker is doing, and a crash of one instance cannot take the campaign with it.
"""

from __future__ import annotations

import gzip
import math
import multiprocessing as mp
import pickle
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from ..bounds import BoundMethod
from ..errors import InputError, describe
from ..models.onnx import load_onnx
from ..models.onnx.loader import MAX_FILE_BYTES
from ..properties import Case, load_vnnlib
from ..runtime.executors import exit_with_parent
from ..runtime.signals import Stopped, check_stop
from ..threat import EpsMode, ThreatModel, WeightBall
from .driver import DEFAULT_METHODS, verify_property
from .export import export_perturbed
from .radius import JointRadius, RadiusMethod, joint_radius
from .result import Counterexample, Status, VerificationResult
from .witness import onnx_executor

__all__ = ["VerifyOptions", "onnx_input_shape", "run_instance", "run_isolated"]

#: Seconds the worker stops before the deadline on its own, so its answer beats the hard stop.
_SOFT_MARGIN = 0.5
#: Seconds between the hard stop's SIGTERM and SIGKILL.
_KILL_GRACE = 0.2
#: Seconds between two looks at a pending stop request while the worker runs.
_POLL_S = 0.1


@dataclass(frozen=True)
class VerifyOptions:
    """What `nonsingular verify` decides beyond the instance (every field has the CLI's default).

    Attributes:
        eps_w: weight radius of a joint property (0: the weights are exact).
        weight_mode: absolute, or relative to |W|.
        weight_ball: element-wise or operator.
        layers: module names of the imported model to perturb (None: every Linear/Conv).
        methods: bound methods tried in turn.
        seed: the attack's random starts.
        threads: torch threads in the worker.
        max_eps_w: after an `unsat`, bisect the largest eps_w (in weight_mode's units) still proven, first by the
            bounds (stats eps_w_proven_bounds / eps_w_open_bounds), then with branch and bound (eps_w_proven /
            eps_w_open; radius.py).
        max_eps_w_timeout: wall-clock seconds of that bisection, on top of the answer's time (None: the
            instance's timeout).
        max_eps_w_method: the bisection's predicate: the bounds alone, or the bounds then branch and bound.
        export_worst: for a joint `sat`, write the ONNX file with the counterexample's weights here.
    """

    eps_w: float = 0.0
    weight_mode: EpsMode = EpsMode.ABSOLUTE
    weight_ball: WeightBall = WeightBall.ELEMENTWISE
    layers: tuple[str, ...] | None = None
    methods: tuple[BoundMethod, ...] = DEFAULT_METHODS
    seed: int = 0
    threads: int = 1
    max_eps_w: bool = False
    max_eps_w_timeout: float | None = None
    max_eps_w_method: RadiusMethod = RadiusMethod.BAB
    export_worst: Path | None = None

    def __post_init__(self) -> None:
        budget = self.max_eps_w_timeout
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise ValueError(f"max_eps_w_timeout must be a positive number of seconds, got {budget}")

    def threat(self, eps_w: float | None = None) -> ThreatModel | None:
        """The weight ball at `eps_w` (default: this run's), None for exact weights."""
        eps = self.eps_w if eps_w is None else eps_w
        if eps == 0:
            return None
        return ThreatModel(eps_w=eps, weight_mode=self.weight_mode, weight_ball=self.weight_ball, layers=self.layers)


@contextmanager
def _plain(path: Path) -> Iterator[Path]:
    """The path itself, or a gunzipped copy in a temporary folder (size-limited) for `.gz` files."""
    if path.suffix != ".gz":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="nonsingular-") as tmp:
        out = Path(tmp) / path.name.removesuffix(".gz")
        try:
            with gzip.open(path, "rb") as src, open(out, "wb") as dst:
                copied = 0
                while chunk := src.read(1 << 20):
                    copied += len(chunk)
                    if copied > MAX_FILE_BYTES:
                        raise InputError(f"{path}: more than {MAX_FILE_BYTES} bytes after gunzip")
                    dst.write(chunk)
        except (OSError, EOFError) as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise InputError(f"{path}: not a readable gzip file ({describe(err)})") from None
        yield out


def onnx_input_shape(path: Path) -> tuple[int, ...]:
    """The ONNX input's shape without its leading batch dimension (1 or symbolic), as onnxruntime reports it."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    from ..errors import blame

    with blame(f"{path}: onnxruntime cannot load it"):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    dims = shape[1:] if shape else []
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise InputError(f"{path}: the input shape {shape} has symbolic dimensions after the batch dimension")
    return tuple(int(d) for d in dims)


def run_instance(
    onnx: str | Path,
    vnnlib: str | Path,
    timeout: float,
    options: VerifyOptions | None = None,
    on_answer: Callable[[VerificationResult], None] | None = None,
) -> VerificationResult:
    """Load the instance and decide it in this process (see `verify_property`).

    on_answer: called with the answer as soon as it is known, before the --max-eps-w bisection and the export
        (the worker sends it at once, so that a hard stop during the bisection keeps the answer).

    Raises:
        InputError, PropertyError, OnnxImportError: one-line problems with the files or options.
    """
    options = options or VerifyOptions()
    start = time.monotonic()
    prop = load_vnnlib(vnnlib)
    with _plain(Path(onnx)) as model_path:
        model = load_onnx(model_path)  # refuses hostile files before onnxruntime reads anything
        shape = onnx_input_shape(model_path)
        left = timeout - (time.monotonic() - start)
        if left <= 0:
            return VerificationResult(Status.TIMEOUT, time.monotonic() - start)
        result = verify_property(
            model,
            prop,
            timeout=left,
            input_shape=shape,
            threat=options.threat(),
            onnx_path=model_path,
            methods=options.methods,
            seed=options.seed,
        )
        answered = time.monotonic() - start  # the row's time is the answer's; the bisection is reported apart
        result.seconds = answered
        if on_answer is not None:
            on_answer(result)
        if result.status is Status.UNSAT and options.max_eps_w:
            radius = joint_radius(
                model,
                prop,
                shape,
                options.threat,
                options.methods,
                budget=bisection_budget(options, timeout),
                method=options.max_eps_w_method,
                seed=options.seed,
                on_step=lambda r: _report_radius(result, r, on_answer),
            )
            result.stats.update(radius.stats(), eps_w_seconds=time.monotonic() - start - answered)
        cex = result.counterexample
        if options.export_worst is not None and cex is not None and cex.weights:
            _export_checked(model_path, model, cex, prop.cases[cex.case], shape, options.export_worst, result)
    result.seconds = answered
    return result


def bisection_budget(options: VerifyOptions, timeout: float) -> float:
    """Seconds the --max-eps-w bisection may run after the answer: its own option, else the instance's timeout."""
    return timeout if options.max_eps_w_timeout is None else options.max_eps_w_timeout


def _report_radius(
    result: VerificationResult, radius: JointRadius, on_answer: Callable[[VerificationResult], None] | None
) -> None:
    """Keep the bisection's latest brackets in the result, and send them on: a hard stop keeps what was proven."""
    result.stats.update(radius.stats())
    if on_answer is not None:
        on_answer(result)


def _export_checked(
    model_path: Path,
    model: torch.nn.Module,
    cex: Counterexample,
    case: Case,
    shape: tuple[int, ...],
    out: Path,
    result: VerificationResult,
) -> None:
    """Write the perturbed ONNX file and keep it only if onnxruntime, running it, lands in the unsafe region."""
    export_perturbed(model_path, model, cex.weights, out)
    y = torch.from_numpy(onnx_executor(out)(cex.x.to(torch.float32).reshape(1, *shape).numpy())).to(torch.float64)
    if float(case.unsafe[cex.conjunction].violation(y)[0]) <= 0:
        cex.y, cex.checked_by = y[0], "onnxruntime (exported weights)"
    else:
        out.unlink()
        result.message = "onnxruntime, running the exported weights, does not reach the unsafe region: not exported"


def _worker(conn: Connection, onnx: str, vnnlib: str, timeout: float, options: VerifyOptions) -> None:
    # A parent killed outright (a Ray worker SIGKILLed, whose unit Ray runs again elsewhere; a killed campaign)
    # cannot stop this process at the deadline: it ends itself instead of finishing an answer nobody reads.
    exit_with_parent(0.2)
    # The parent decides what a stop means: Ctrl-C reaches the whole process group, and the worker leaves it to
    # the parent (which kills it); a SIGTERM (the parent's hard stop, or a scheduler's) ends it at once instead of
    # running the inherited stop handler.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(options.threads)

    def send(result: VerificationResult) -> None:
        # Plain pickle: tensors travel by value (multiprocessing's own pickler would share their memory through
        # a file descriptor that dies with this process).
        conn.send_bytes(pickle.dumps(result))

    try:
        send(run_instance(onnx, vnnlib, timeout, options, on_answer=send))
    except (ValueError, OSError) as err:  # bad input: reported as the `error` answer with its one line
        send(VerificationResult(Status.ERROR, 0.0, message=describe(err)))
    conn.close()


def run_isolated(
    onnx: str | Path, vnnlib: str | Path, timeout: float, options: VerifyOptions | None = None
) -> VerificationResult:
    """`run_instance` in a worker process, stopped at the deadline: the answer arrives within about
    _KILL_GRACE + the time to stop a process after `timeout` seconds, whatever the worker is doing.

    With --max-eps-w, an `unsat` answer moves the deadline to its arrival + the bisection's budget
    (`bisection_budget`): the worker bisects within that budget, sending its brackets as it goes, and a worker
    stopped then keeps the answer (and its `seconds`) with the latest brackets it sent.

    A worker that dies without an answer (a crash, out of memory) gives `error` with what is known.

    Raises:
        Stopped: a stop request (SIGINT/SIGTERM under `stop_on_signals`) arrived while the instance ran, or its
            worker was ended by SIGTERM/SIGINT from outside; the worker is killed, and no answer is returned.
    """
    options = options or VerifyOptions()
    start = time.monotonic()
    # fork: the worker inherits the imported modules (no re-import of torch, no re-run of the main script);
    # it sets its own thread count first, as torch's DataLoader workers do.
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    budget = bisection_budget(options, timeout)
    # The worker keeps a margin on both clocks, so that its own answer and its last bracket beat the hard stop.
    worker_options = replace(options, max_eps_w_timeout=max(0.05, budget - _SOFT_MARGIN))
    proc = ctx.Process(
        target=_worker,
        args=(send, str(onnx), str(vnnlib), max(0.05, timeout - _SOFT_MARGIN), worker_options),
        daemon=True,
    )
    proc.start()
    send.close()
    result: VerificationResult | None = None
    killed = False
    deadline = start + timeout
    try:
        # The worker sends the answer, then (after --max-eps-w or an export) the final result: keep the latest.
        # Polled in short slices so that a stop request (runtime/signals.py) ends the wait within _POLL_S.
        while (left := deadline - time.monotonic()) > 0:
            if not receive.poll(min(left, _POLL_S)):
                check_stop()
                continue
            try:
                message = pickle.loads(receive.recv_bytes())
            except EOFError:
                break
            if result is None and options.max_eps_w and message.status is Status.UNSAT:
                deadline = time.monotonic() + budget  # the bisection's own time, after the answer
            result = message
        if result is None:  # no answer and a stop pending: the worker's end is the stop's, not an `error` answer
            check_stop()
    finally:  # also on Stopped: the running instance's worker never outlives the wait
        if proc.is_alive():
            killed = True
            proc.terminate()
            proc.join(_KILL_GRACE)
            if proc.is_alive():
                proc.kill()
        proc.join()
        receive.close()
    if result is None and not killed and proc.exitcode in (-signal.SIGTERM, -signal.SIGINT):
        # Someone else stopped the worker (a scheduler's SIGTERM to the process group): that is a stop of the
        # run, not an `error` answer of the instance.
        raise Stopped(-(proc.exitcode or 0))
    seconds = time.monotonic() - start
    if result is None:  # no answer: the instance's own timeout stopped it (the bisection never started)
        if seconds >= timeout:
            return VerificationResult(Status.TIMEOUT, seconds)
        return VerificationResult(
            Status.ERROR, seconds, message=f"the worker process stopped (exit code {proc.exitcode})"
        )
    result.seconds = min(result.seconds, seconds) if result.status is not Status.ERROR else seconds
    return result
