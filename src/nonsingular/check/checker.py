"""Independent check of an attack's result: is it inside the threat set, and what does the ordinary module say?

Shares nothing with the attack code but the threat model, which defines the set: the input box is
`ThreatModel.input_bounds`, the weight balls `weight_radius` (element-wise), `operator_radius` (operator ball)
and `bias_radius`. Element-wise boxes [W - rho, W + rho] and operator-ball row sums of |W' - W| are computed in
the model's dtype and inputs are checked in x's dtype (THEORY.md section 8), with no tolerance beyond that
dtype's rounding. Predictions are recomputed with `torch.func.functional_call` on the explicit perturbed weights
(per example via `torch.func.vmap`) and must agree with the attack's logits within `logit_tolerance`. Nothing
of the user's module is modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..threat import Scope, ThreatModel, WeightBall

__all__ = ["LOGIT_TOLERANCE_EPS", "TF32_EPS", "AttackCheck", "Witness", "check_attack", "logit_tolerance"]


class Witness(Protocol):
    """What the checker reads of an attack's result (`attacks.AttackResult` is one). Declared here, not
    imported, so that the checker shares no code with the attacks it checks."""

    @property
    def x_adv(self) -> Tensor:
        """(N, *input_shape) the perturbed inputs."""
        ...

    @property
    def logits(self) -> Tensor:
        """(N, classes) the attack's own logits at (x_adv, perturbed weights)."""
        ...

    @property
    def threat(self) -> ThreatModel:
        """The threat set the result must lie in."""
        ...

    def perturbed_weights(self, start: int = 0, stop: int | None = None) -> dict[str, Tensor]:
        """Explicit perturbed parameters for examples start..stop (shared scope: one set, no example dim)."""
        ...


#: Accepted |recomputed - attack's| logit gap, in machine epsilons of the precision the forward passes ran in,
#: relative to max(1, max |logit|). The two passes differ only in float rounding: the attack adds the Lemma 1
#: box t * r(h) or D h to W h, the checker multiplies by W' = W + D, and the batching differs. In float32 on
#: CPU 1024 eps is 1.2e-4 relative (the gaps seen on the tests' MLPs and CNNs stay below 1.4e-6); in float64
#: 2.3e-13. A wrong or tampered logit is off by far more.
LOGIT_TOLERANCE_EPS = 1024

#: Machine epsilon of TF32 (10 explicit mantissa bits), the precision of float32 matmuls and convolutions on
#: CUDA when torch allows it (`torch.backends.cuda.matmul.allow_tf32`, `torch.backends.cudnn.allow_tf32`).
TF32_EPS = 2.0**-10


@dataclass
class AttackCheck:
    """Outcome of `check_attack`.

    Attributes:
        passed: every input and weight lies in the threat set (no tolerance beyond the dtype's own rounding),
            every number is finite, and the recomputed logits agree with the attack's within `logit_tolerance`.
        input_violation: largest amount by which an input leaves its box (0 when inside), in data units.
        weight_violation: per parameter name, largest amount by which W' - W leaves its ball (element-wise:
            per entry; operator ball: per row's l1 norm).
        logits: (N, classes) recomputed by the ordinary module with x_adv and W'.
        correct: (N,) recomputed prediction equals the label.
        max_logit_gap: largest |recomputed - attack's| logit difference (float rounding for Lemma 1 paths).
        logit_tolerance: the largest gap `passed` accepts (see `logit_tolerance`).
        problems: one line per reason `passed` is False.
    """

    passed: bool
    input_violation: float
    weight_violation: dict[str, float]
    logits: Tensor
    correct: Tensor
    max_logit_gap: float
    logit_tolerance: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean())


def logit_tolerance(logits: Tensor) -> float:
    """The largest logit gap `check_attack` accepts: LOGIT_TOLERANCE_EPS x eps x max(1, max |logit|).

    eps is the machine epsilon of the logits' dtype, or TF32_EPS for float32 on CUDA with TF32 allowed.

    Args:
        logits: (N, classes) the attack's logits; their dtype, device and scale set the tolerance.
    """
    eps = torch.finfo(logits.dtype).eps
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    if logits.is_cuda and logits.dtype == torch.float32 and tf32:
        eps = TF32_EPS
    finite = logits.detach()[torch.isfinite(logits.detach())]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    return LOGIT_TOLERANCE_EPS * eps * max(1.0, scale)


def _max_or_zero(t: Tensor) -> float:
    return float(t.max()) if t.numel() else 0.0


def _input_violation(threat: ThreatModel, x: Tensor, x_adv: Tensor) -> float:
    lb, ub = threat.input_bounds(x)
    return _max_or_zero(torch.maximum(lb - x_adv, x_adv - ub).clamp_min(0))


class _Ball:
    """The set one parameter may move in, built once per check: element-wise balls as the boxes
    [W - rho, W + rho] the dtype computes (like the input box; a bias the threat does not perturb, eps_b = 0,
    has the box of radius 0), the operator ball as its row radius e.

    Element-wise, only the smallest and largest value each entry takes over the examples is kept (`add`, two
    reads of each chunk): rounding is monotone, so max_n fl(lower - W'_n) = fl(lower - min_n W'_n) and the
    violation computed from the extremes is exactly the largest per-example violation. amin and amax propagate
    NaN. NaN and infinities
    propagate through the extremes and the reductions (no separate finiteness pass)."""

    def __init__(self, threat: ThreatModel, layer: str, kind: str, base: Tensor) -> None:
        # Deliberately not ThreatModel.layer_radii, which the attack and the bounds share: the checker picks the
        # ball from the threat's definitions on its own, so a slip in that shared derivation makes checks fail
        # instead of agreeing with the attack that made the same slip.
        self.base = base
        self.operator = kind == "weight" and threat.weight_ball is WeightBall.OPERATOR
        self.low: Tensor | None = None
        self.high: Tensor | None = None
        self.worst = 0.0
        if self.operator:
            self.e = threat.operator_radius(layer, base)
        else:
            rho = threat.bias_radius(base) if kind == "bias" else threat.weight_radius(layer, base)
            rho = torch.zeros_like(base) if rho is None else rho
            self.lower, self.upper = base - rho, base + rho

    def add(self, perturbed: Tensor) -> None:
        """Take in W' (or b') of some examples: base's shape, or with a leading example axis."""
        if self.operator:
            rows = self.base.shape[0]
            diff = perturbed - self.base
            row_sums = diff.reshape(*diff.shape[: diff.dim() - self.base.dim()], rows, -1).abs().sum(dim=-1)
            v = _largest([row_sums - self.e])
            self.worst = v if math.isnan(v) or math.isnan(self.worst) else max(self.worst, v)
            return
        if perturbed.dim() > self.base.dim():
            # amin and amax apart: on the CPU each is a vectorised outer reduction, aminmax over dim 0 is not
            # (7x slower on chunks of a 784-512 MLP layer).
            low, high = perturbed.amin(dim=0), perturbed.amax(dim=0)
        else:
            low = high = perturbed
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)

    def violation(self) -> float:
        """How far the W' taken in leave the ball (0 inside); NaN when a value is NaN, inf when one is infinite."""
        if self.operator or self.low is None or self.high is None:
            return self.worst
        return _largest([self.lower - self.low, self.high - self.upper])


def _largest(parts: list[Tensor]) -> float:
    """max(0, every entry of every part), NaN when an entry is NaN (torch's max propagates it)."""
    values = [float(t.max()) for t in parts if t.numel()]
    return float("nan") if any(math.isnan(v) for v in values) else max([0.0, *values])


#: Bytes of explicit perturbed parameters a per-example check holds at once (one chunk) on the CPU. Small
#: enough that the chunk the attack materialises is still in the CPU's caches when the ball check and the
#: forward pass read it (a 784-512-512 MLP checked 200 examples 3.3x faster in chunks of 8 than of 64).
CHECK_MEMORY_MB = 16.0


def _chunk_size(per_example_bytes: int, memory_mb: float = CHECK_MEMORY_MB) -> int:
    """Examples per per-example check chunk: as many as `memory_mb` of perturbed parameters, between 1 and 64."""
    return max(1, min(64, int(memory_mb * 2**20) // max(1, per_example_bytes)))


def check_attack(model: nn.Module, x: Tensor, y: Tensor, result: Witness, chunk_size: int | None = None) -> AttackCheck:
    """Check `result` against its threat and recompute predictions with the ordinary module.

    Args:
        model: the attacked model (run in eval mode here, its mode restored).
        x: (N, *input_shape) the clean inputs the attack started from.
        y: (N,) labels.
        result: the attack's output.
        chunk_size: examples per vmap call in per-example scope (bounds memory: chunk x parameters); default:
            about 4M perturbed values per chunk on the CPU, at most 64 examples; 64 on a GPU.

    Returns:
        The verdict; `passed` is False, with a line in `problems` naming the reason, when an input or a weight
        leaves the threat set, a perturbed parameter is outside the threat's layers, any input, weight or logit
        is not finite, or the recomputed logits differ from the attack's by more than `logit_tolerance`.
    """
    threat = result.threat
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    problems: list[str] = []
    if not bool(torch.isfinite(result.x_adv).all()):
        problems.append("the adversarial inputs are not all finite")
    input_violation = _input_violation(threat, x, result.x_adv)
    if input_violation > 0:
        problems.append(f"inputs leave the eps_x box by up to {input_violation:.3g}")
    allowed = {f"{name}.{kind}" for name, _ in threat.weight_layers(model) for kind in ("weight", "bias")}
    weight_violation: dict[str, float] = {}
    not_finite: set[str] = set()
    balls: dict[str, _Ball] = {}
    misshapen: dict[str, str] = {}  # parameter name -> problem
    logits_parts: list[Tensor] = []

    was_training = model.training
    model.eval()
    try:
        shared = threat.scope is Scope.SHARED
        if chunk_size is None and x.device.type != "cpu":
            chunk_size = 64  # a GPU wants wide batches; the cache argument below is the CPU's
        if chunk_size is None:  # at most every weight and bias of the threat's layers is perturbed per example
            per_example = sum(params[n].numel() * params[n].element_size() for n in allowed if n in params)
            chunk_size = _chunk_size(per_example if threat.perturbs_weights else 0)
        spans = [(0, len(x))] if shared else [(s, min(s + chunk_size, len(x))) for s in range(0, len(x), chunk_size)]
        for s, e in spans:
            perturbed = result.perturbed_weights(s, e)
            for pname, value in perturbed.items():
                if pname not in allowed:
                    problems.append(f"{pname} is perturbed but outside the threat's layers")
                    continue
                if pname not in balls:
                    layer, _, kind = pname.rpartition(".")
                    balls[pname] = _Ball(threat, layer, kind, params[pname].detach())
                base = balls[pname].base
                want = tuple(base.shape) if shared else (e - s, *base.shape)
                if tuple(value.shape) != want:
                    misshapen[pname] = f"{pname} has shape {tuple(value.shape)}, not {want}"
                    continue
                with torch.no_grad():
                    balls[pname].add(value)
            # A wrongly shaped parameter is reported above; the forward runs with the module's own in its place.
            perturbed = {k: v for k, v in perturbed.items() if k not in misshapen}
            with torch.no_grad():
                xs = result.x_adv[s:e]
                if shared or not perturbed:
                    logits_parts.append(functional_call(model, ({**params, **perturbed}, buffers), (xs,)))
                else:
                    fixed: dict[str, Tensor] = {k: v for k, v in params.items() if k not in perturbed}

                    def one(p: dict[str, Tensor], xi: Tensor, fixed: dict[str, Tensor] = fixed) -> Tensor:
                        out: Tensor = functional_call(model, ({**fixed, **p}, buffers), (xi[None],))
                        return out[0]

                    logits_parts.append(vmap(one)(perturbed, xs))
    finally:
        model.train(was_training)

    for pname, ball in balls.items():
        v = ball.violation()
        if math.isfinite(v):
            weight_violation[pname] = v
        else:
            not_finite.add(pname)
    problems += [misshapen[pname] for pname in sorted(misshapen)]
    problems += [f"{pname} has non-finite perturbed values" for pname in sorted(not_finite)]
    for pname, v in weight_violation.items():
        if v > 0:
            problems.append(f"{pname} leaves its ball by up to {v:.3g}")
    logits = torch.cat(logits_parts)
    tolerance = logit_tolerance(result.logits)
    if not bool(torch.isfinite(result.logits).all()):
        problems.append("the attack's logits are not all finite")
    if not bool(torch.isfinite(logits).all()):
        problems.append("the recomputed logits are not all finite")
    gap = _max_or_zero((logits - result.logits).abs()) if logits.shape == result.logits.shape else float("inf")
    if not gap <= tolerance:  # also catches a NaN gap
        problems.append(f"recomputed logits differ from the attack's by {gap:.3g} (tolerance {tolerance:.3g})")
    return AttackCheck(
        passed=not problems,
        input_violation=input_violation,
        weight_violation=weight_violation,
        logits=logits,
        correct=logits.argmax(dim=1) == y,
        max_logit_gap=gap,
        logit_tolerance=tolerance,
        problems=problems,
    )
