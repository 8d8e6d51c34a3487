"""`verify_property`: decide a property on a model within a wall-clock budget (THEORY.md section 12).

The loop reads like the method: falsify (the attack on every disjunct's own objective), bound every (box,
conjunction) piece with interval propagation, CROWN and alpha-CROWN until each is proven empty, hand what is left
to branch and bound when `nonsingular.complete` is present, and attack again with the time that remains. A piece
is empty when some row r of its conjunction has a lower bound of C_r f(x) - d_r above zero over the box (and the
weight ball); the property is `unsat` when every piece is. `sat` only with a counterexample that
`witness.try_witness` re-checked with the reference runtime. The clock is checked between attack rounds and
bound calls, and a bound call is skipped when the last one of its kind would not fit in the time left; the CLI
enforces the hard limit by running this in a worker process it stops at the deadline.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..bounds import BoundMethod
from ..bounds.layers import UnsupportedLayerError
from ..bounds.rounding import FLOAT32_UNIT_ROUNDOFF
from ..bounds.spec import spec_bounds
from ..properties import Case, Property, PropertyError
from ..threat import ThreatModel
from .falsify import falsify_case
from .result import Counterexample, Status, VerificationResult
from .witness import Executor, onnx_executor, torch_executor, try_witness

__all__ = ["DEFAULT_METHODS", "verify_property"]

log = logging.getLogger(__name__)

#: Bound methods tried in turn on the pieces still open.
DEFAULT_METHODS = (BoundMethod.IBP, BoundMethod.CROWN, BoundMethod.ALPHA_CROWN)
#: Candidates per case handed to the reference runtime after each attack round (best first).
_CHECKED = 4


class _Clock:
    def __init__(self, timeout: float) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + timeout

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def spent(self) -> float:
        return time.monotonic() - self.start


def _check_shapes(model: nn.Module, prop: Property, input_shape: tuple[int, ...]) -> None:
    if math.prod(input_shape) != prop.num_inputs:
        raise PropertyError(
            f"the property has {prop.num_inputs} inputs but the model takes {math.prod(input_shape)} "
            f"(shape {input_shape})"
        )
    dtype = next(iter(model.parameters())).dtype
    with torch.no_grad():
        out = model(((prop.cases[0].lower + prop.cases[0].upper) / 2).to(dtype).reshape(1, *input_shape))
    if out.numel() != prop.num_outputs:
        raise PropertyError(f"the property has {prop.num_outputs} outputs but the model gives {out.numel()}")


def _attack(
    model: nn.Module,
    prop: Property,
    input_shape: tuple[int, ...],
    threat: ThreatModel | None,
    run: Executor,
    checked_by: str,
    open_cases: Sequence[int],
    restarts: int,
    steps: int,
    seed: int,
) -> Counterexample | None:
    for i in open_cases:
        case = prop.cases[i]
        found = falsify_case(model, case, input_shape, threat=threat, restarts=restarts, steps=steps, seed=seed)
        head = found.x[:_CHECKED]
        if threat is None or not threat.perturbs_weights:
            cex = try_witness(head, case, i, run, input_shape, checked_by)
            if cex is not None:
                return cex
        else:
            from .joint import joint_witness

            cex = joint_witness(model, found, case, i, input_shape, threat, _CHECKED)
            if cex is not None:
                return cex
    return None


def verify_property(
    model: nn.Module,
    prop: Property,
    *,
    timeout: float,
    input_shape: Sequence[int] | None = None,
    threat: ThreatModel | None = None,
    onnx_path: str | Path | None = None,
    executor: Executor | None = None,
    methods: Sequence[BoundMethod | str] = DEFAULT_METHODS,
    attack_share: float = 0.25,
    alpha_steps: int = 20,
    seed: int = 0,
) -> VerificationResult:
    """Decide whether any input of the property's boxes (and, with a weight threat, any weight of its ball)
    reaches the unsafe region.

    Args:
        model: the network (float32, as it is executed); never modified.
        prop: the property (boxes in the model's own input scale).
        timeout: wall-clock budget, seconds; the answer is `timeout` when it runs out.
        input_shape: the model's input shape without the batch dimension (default: flat, (num_inputs,)).
        threat: a weight ball (eps_x must be 0: the box is the input set) for a joint property.
        onnx_path: the ONNX file the model came from: onnxruntime re-checks every counterexample on it.
        executor: the reference runtime instead (default: onnxruntime on onnx_path, else torch in float32).
        methods: bound methods, tried in turn on the pieces still open.
        attack_share: fraction of the budget the first attack phase may use.
        alpha_steps: alpha-CROWN's gradient steps.
        seed: the attack's random starts.

    Raises:
        PropertyError: the property does not fit the model (input or output count).
        ValueError: bad options.
    """
    clock = _Clock(timeout)
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    if threat is not None and threat.eps_x > 0:
        raise ValueError("the property's box is the input set: give a weight-only threat (eps_x = 0)")
    shape = tuple(int(s) for s in input_shape) if input_shape is not None else (prop.num_inputs,)
    _check_shapes(model, prop, shape)
    if executor is not None:
        run, checked_by = executor, "custom"
    elif onnx_path is not None:
        run, checked_by = onnx_executor(onnx_path), "onnxruntime"
    else:
        run, checked_by = torch_executor(model), "torch-float32"
    methods = [BoundMethod(m) for m in methods]
    stats: dict[str, float] = {}

    def finish(
        status: Status, by: str = "", cex: Counterexample | None = None, message: str = ""
    ) -> VerificationResult:
        return VerificationResult(status, clock.spent(), by, cex, message, stats)

    # A conjunction without rows makes every output unsafe: the box's centre is a counterexample.
    for i, case in enumerate(prop.cases):
        if any(c.C.shape[0] == 0 for c in case.unsafe):
            cex = try_witness(((case.lower + case.upper) / 2)[None], case, i, run, shape, checked_by)
            if cex is not None:
                return finish(Status.SAT, "attack", cex)

    open_pieces = set(prop.pieces())
    rounds = 0
    attack_until = clock.start + attack_share * timeout
    while True:  # the first round always runs; more while the attack's share of the budget lasts
        cex = _attack(
            model, prop, shape, threat, run, checked_by, sorted({c for c, _ in open_pieces}), 8, 50, seed + rounds
        )
        rounds += 1
        stats["attack_rounds"] = rounds
        if cex is not None:
            return finish(Status.SAT, "attack", cex)
        if clock.left() <= 0:
            return finish(Status.TIMEOUT)
        if rounds >= 2 or time.monotonic() > attack_until:
            break

    cost: dict[BoundMethod, float] = {}
    roundoff: float | None = FLOAT32_UNIT_ROUNDOFF

    def bound(case: Case, C: Tensor, d: Tensor, method: BoundMethod) -> Tensor:
        """(S,) lower bounds on C f(x) - d for the model as executed in float32 (section 13), or in exact
        arithmetic where the rounding analysis cannot follow the graph (recorded in the stats)."""
        nonlocal roundoff
        box = (case.lower.reshape(1, *shape), case.upper.reshape(1, *shape))
        with torch.no_grad():
            try:
                return spec_bounds(
                    model, *box, C, d, threat, method, alpha_steps=alpha_steps, executed_roundoff=roundoff
                )[0]
            except UnsupportedLayerError as err:
                if roundoff is None or "rounding" not in str(err):
                    raise
                log.warning("bounds hold in exact arithmetic only: %s", err)
                stats["rounding_unbounded"] = 1
                roundoff = None
                return spec_bounds(model, *box, C, d, threat, method, alpha_steps=alpha_steps)[0]

    for method in methods:
        for i in sorted({c for c, _ in open_pieces}):
            case = prop.cases[i]
            js = [j for c, j in open_pieces if c == i]
            estimate = cost.get(method, 0.0)
            if clock.left() <= estimate:
                return finish(Status.TIMEOUT)
            t0 = time.monotonic()
            C = torch.cat([case.unsafe[j].C for j in js])
            d = torch.cat([case.unsafe[j].d for j in js])
            lower = bound(case, C, d, method)
            cost[method] = max(cost.get(method, 0.0), time.monotonic() - t0)
            stats[f"{method.value}_calls"] = stats.get(f"{method.value}_calls", 0) + 1
            offset = 0
            for j in js:
                rows = case.unsafe[j].C.shape[0]
                part = lower[offset : offset + rows]
                offset += rows
                best = float(part.max()) if rows else -math.inf
                stats[f"bound_case{i}_conj{j}"] = best
                if best > 0:
                    open_pieces.discard((i, j))
            if clock.left() <= 0:
                return finish(Status.TIMEOUT)
        if not open_pieces:
            return finish(Status.UNSAT, method.value)

    # The bounds are inconclusive: attack with the time that remains (bounded, so `unknown` comes back early).
    for extra in range(2):
        if clock.left() < 1.0:
            return finish(Status.TIMEOUT)
        cex = _attack(
            model,
            prop,
            shape,
            threat,
            run,
            checked_by,
            sorted({c for c, _ in open_pieces}),
            16,
            100,
            seed + 1000 + extra,
        )
        stats["attack_rounds"] = stats.get("attack_rounds", 0) + 1
        if cex is not None:
            return finish(Status.SAT, "attack", cex)
    return finish(Status.UNKNOWN, message=f"{len(open_pieces)} of {len(prop.pieces())} pieces not proven")
