"""`verify_property`: decide a property on a model within a wall-clock budget (THEORY.md section 12).

The loop reads like the method: falsify (the attack on every disjunct's own objective), bound every (box,
conjunction) piece with interval propagation, CROWN and alpha-CROWN until each is proven empty (bounding.py),
hand what is left to branch and bound (complete_phase.py), and attack again with some of the time that
remains. `unsat` when every piece is proven; `sat` only with a
counterexample re-checked by the reference runtime (witness.py; joint ones also by the independent checker,
joint.py); `unknown` when the bounds stay inconclusive and the attack finds nothing; `timeout` when the clock
runs out first. The clock is read between attack rounds and bound calls; the CLI enforces the hard limit by
running this in a worker process it stops at the deadline (instance.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..bounds import BoundMethod
from ..errors import blame
from ..properties import Property, PropertyError
from ..threat import ThreatModel
from .bounding import prove_pieces
from .complete_phase import complete_pieces
from .falsify import falsify_case
from .joint import joint_witness
from .result import Counterexample, Status, VerificationResult
from .witness import Executor, onnx_executor, torch_executor, try_witness

__all__ = ["DEFAULT_METHODS", "verify_property"]

#: Bound methods tried in turn on the pieces still open.
DEFAULT_METHODS = (BoundMethod.IBP, BoundMethod.CROWN, BoundMethod.ALPHA_CROWN)
#: Candidates per case handed to the reference runtime after each attack round (best first).
_CHECKED = 4
#: (restarts per conjunction, steps) of the first attack rounds, and of the rounds after inconclusive bounds.
_FIRST, _LATER = (8, 50), (16, 100)


def _check_shapes(model: nn.Module, prop: Property, input_shape: tuple[int, ...]) -> None:
    if math.prod(input_shape) != prop.num_inputs:
        raise PropertyError(
            f"the property has {prop.num_inputs} inputs but the model takes {math.prod(input_shape)} "
            f"(shape {input_shape})"
        )
    dtype = next(iter(model.parameters())).dtype
    centre = ((prop.cases[0].lower + prop.cases[0].upper) / 2).to(dtype).reshape(1, *input_shape)
    with torch.no_grad(), blame(f"the model on the property's {prop.num_inputs} inputs (shape {input_shape})"):
        out = model(centre)
    if out.numel() != prop.num_outputs:
        raise PropertyError(f"the property has {prop.num_outputs} outputs but the model gives {out.numel()}")


def _attack(
    model: nn.Module,
    prop: Property,
    shape: tuple[int, ...],
    threat: ThreatModel | None,
    run: Executor,
    checked_by: str,
    cases: Sequence[int],
    budget: tuple[int, int],
    seed: int,
) -> Counterexample | None:
    restarts, steps = budget
    for i in cases:
        case = prop.cases[i]
        found = falsify_case(model, case, shape, threat=threat, restarts=restarts, steps=steps, seed=seed)
        if threat is not None and threat.perturbs_weights:
            cex = joint_witness(model, found, case, i, shape, threat, _CHECKED)
        else:
            cex = try_witness(found.x[:_CHECKED], case, i, run, shape, checked_by)
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
    complete: bool = True,
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
        attack_share: fraction of the budget the first attack phase may use (at least one round always runs).
        alpha_steps: alpha-CROWN's gradient steps.
        seed: the attack's random starts.
        complete: hand the pieces the bounds leave open to branch and bound (`nonsingular.complete`).

    Raises:
        PropertyError: the property does not fit the model (input or output count).
        ValueError: bad options.
    """
    start = time.monotonic()
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    if not 0 <= attack_share <= 1:
        raise ValueError(f"attack_share must be in [0, 1], got {attack_share}")
    if threat is not None and threat.eps_x > 0:
        raise ValueError("the property's box is the input set: give a weight-only threat (eps_x = 0)")
    deadline = start + timeout
    shape = tuple(int(s) for s in input_shape) if input_shape is not None else (prop.num_inputs,)
    _check_shapes(model, prop, shape)
    if executor is not None:
        run, checked_by = executor, "custom"
    elif onnx_path is not None:
        run, checked_by = onnx_executor(onnx_path), "onnxruntime"
    else:
        run, checked_by = torch_executor(model), "torch-float32"
    bound_methods = [BoundMethod(m) for m in methods]
    stats: dict[str, float] = {"attack_rounds": 0}

    def finish(status: Status, by: str = "", cex: Counterexample | None = None, why: str = "") -> VerificationResult:
        return VerificationResult(status, time.monotonic() - start, by, cex, why, stats)

    # A conjunction without rows makes every output unsafe: the box's centre is a counterexample.
    for i, case in enumerate(prop.cases):
        if any(c.C.shape[0] == 0 for c in case.unsafe):
            cex = try_witness(((case.lower + case.upper) / 2)[None], case, i, run, shape, checked_by)
            if cex is not None:
                return finish(Status.SAT, "attack", cex)

    open_pieces = set(prop.pieces())

    def attack_round(budget: tuple[int, int]) -> Counterexample | None:
        cases = sorted({c for c, _ in open_pieces})
        seed_now = seed + int(stats["attack_rounds"])
        stats["attack_rounds"] += 1
        return _attack(model, prop, shape, threat, run, checked_by, cases, budget, seed_now)

    while True:  # the first round always runs; a second one while the attack's share of the budget lasts
        cex = attack_round(_FIRST)
        if cex is not None:
            return finish(Status.SAT, "attack", cex)
        if time.monotonic() >= deadline:
            return finish(Status.TIMEOUT)
        if stats["attack_rounds"] >= 2 or time.monotonic() - start > attack_share * timeout:
            break

    # Branch and bound starts from alpha-CROWN at its root: with it, alpha-CROWN runs there, not twice.
    deferred = [m for m in bound_methods if complete and m is BoundMethod.ALPHA_CROWN]
    first = [m for m in bound_methods if m not in deferred]
    for methods_now, search in ((first, complete), (deferred, False)):
        if methods_now:
            outcome = prove_pieces(model, prop, shape, threat, methods_now, open_pieces, deadline, alpha_steps)
            stats.update(outcome.stats)
            if outcome.decided_by is not None:
                return finish(Status.UNSAT, outcome.decided_by)
            if outcome.out_of_time:
                return finish(Status.TIMEOUT)
            open_pieces = outcome.open_pieces
        if search:
            searched = complete_pieces(model, prop, shape, threat, open_pieces, deadline, run, checked_by, seed)
            stats.update(searched.stats)
            if searched.counterexample is not None:
                return finish(Status.SAT, "bab", searched.counterexample)
            if not searched.open_pieces:
                return finish(Status.UNSAT, "bab")
            if searched.out_of_time:
                return finish(Status.TIMEOUT)
            open_pieces = searched.open_pieces
            if not searched.stats.get("bab_unsupported"):
                break  # the search ran: its root bound is already alpha-CROWN's

    # Inconclusive: two stronger attack rounds on what is open, then `unknown` (early, not at the limit).
    for _ in range(2):
        if deadline - time.monotonic() < 1.0:
            return finish(Status.TIMEOUT)
        cex = attack_round(_LATER)
        if cex is not None:
            return finish(Status.SAT, "attack", cex)
    return finish(Status.UNKNOWN, why=f"{len(open_pieces)} of {len(prop.pieces())} pieces not proven by the bounds")
