"""Independent check of an attack's result: is it inside the threat set, and what does the ordinary module say?

Shares nothing with the attack code but the threat model's definition of the set. Element-wise weight boxes
[W - rho, W + rho] and operator-ball row sums of |W' - W| are computed in the model's dtype, inputs are checked
against [max(x - eps_x, lo), min(x + eps_x, hi)] in x's dtype (THEORY.md section 8), and predictions
are recomputed with `torch.func.functional_call` on the explicit perturbed weights (per example via
`torch.func.vmap`). Nothing of the user's module is modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .attacks import AttackResult
from .threat import Scope, ThreatModel, WeightBall

__all__ = ["Verification", "verify"]


@dataclass
class Verification:
    """Outcome of `verify`.

    Attributes:
        passed: every input and weight lies in the threat set (no tolerance beyond the dtype's own rounding).
        input_violation: largest amount by which an input leaves its box (0 when inside).
        weight_violation: per parameter name, largest amount by which W' - W leaves its ball.
        logits: (N, classes) recomputed by the ordinary module with x_adv and W'.
        correct: (N,) recomputed prediction equals the label.
        max_logit_gap: largest |recomputed - attack's| logit difference (float rounding for Lemma 1 paths).
    """

    passed: bool
    input_violation: float
    weight_violation: dict[str, float]
    logits: Tensor
    correct: Tensor
    max_logit_gap: float
    problems: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean())


def _input_violation(threat: ThreatModel, x: Tensor, x_adv: Tensor) -> float:
    lo, hi = threat.domain
    lb = torch.clamp(x - threat.eps_x, min=lo)
    ub = torch.clamp(x + threat.eps_x, max=hi)
    excess = torch.maximum(lb - x_adv, x_adv - ub).clamp_min(0)
    return float(excess.max()) if excess.numel() else 0.0


def _weight_violation(threat: ThreatModel, layer: str, kind: str, base: Tensor, perturbed: Tensor) -> float:
    """How far W' (or b') leaves its ball; perturbed has base's shape, or a leading example axis.

    Element-wise balls are the boxes [W - rho, W + rho] as the dtype computes them, like the input box.
    """
    eps = threat.eps_b if kind == "bias" else threat.eps_w_for(layer)
    relative = threat.weight_mode.value == "relative"
    if kind == "bias" or threat.weight_ball is WeightBall.ELEMENTWISE:
        bound = eps * base.abs() if relative else torch.full_like(base, eps)
        excess = torch.maximum((base - bound) - perturbed, perturbed - (base + bound))
        return float(excess.clamp_min(0).max())
    diff = perturbed - base
    rows = base.shape[0]
    bound = eps * base.reshape(rows, -1).abs().sum(dim=1).max() if relative else torch.tensor(eps, dtype=base.dtype)
    row_sums = diff.reshape(*diff.shape[: diff.dim() - base.dim()], rows, -1).abs().sum(dim=-1)
    return float((row_sums - bound).clamp_min(0).max())


def verify(model: nn.Module, x: Tensor, y: Tensor, result: AttackResult, chunk_size: int = 64) -> Verification:
    """Check `result` against its threat and recompute predictions with the ordinary module.

    Args:
        model: the attacked model (run in eval mode here, its mode restored).
        x: (N, *input_shape) the clean inputs the attack started from.
        y: (N,) labels.
        result: the attack's output.
        chunk_size: examples per vmap call in per-example scope (bounds memory: chunk x parameters).
    """
    threat = result.threat
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    problems: list[str] = []
    input_violation = _input_violation(threat, x, result.x_adv)
    if input_violation > 0:
        problems.append(f"inputs leave the eps_x box by up to {input_violation:.3g}")
    allowed = {f"{name}.{kind}" for name, _ in threat.weight_layers(model) for kind in ("weight", "bias")}
    weight_violation: dict[str, float] = {}
    logits_parts: list[Tensor] = []

    was_training = model.training
    model.eval()
    try:
        shared = threat.scope is Scope.SHARED
        spans = [(0, len(x))] if shared else [(s, min(s + chunk_size, len(x))) for s in range(0, len(x), chunk_size)]
        for s, e in spans:
            perturbed = result.perturbed_weights(s, e)
            for pname, value in perturbed.items():
                if pname not in allowed:
                    problems.append(f"{pname} is perturbed but outside the threat's layers")
                    continue
                layer, _, kind = pname.rpartition(".")
                if kind == "bias" and threat.eps_b == 0:
                    problems.append(f"{pname} is perturbed but eps_b = 0")
                v = _weight_violation(threat, layer, kind, params[pname].detach(), value)
                weight_violation[pname] = max(weight_violation.get(pname, 0.0), v)
            with torch.no_grad():
                xs = result.x_adv[s:e]
                if shared or not perturbed:
                    logits_parts.append(functional_call(model, ({**params, **perturbed}, buffers), (xs,)))
                else:
                    fixed = {k: v for k, v in params.items() if k not in perturbed}

                    def one(p: dict[str, Tensor], xi: Tensor, fixed: dict[str, Tensor] = fixed) -> Tensor:
                        return functional_call(model, ({**fixed, **p}, buffers), (xi[None],))[0]

                    logits_parts.append(vmap(one)(perturbed, xs))
    finally:
        model.train(was_training)

    for pname, v in weight_violation.items():
        if v > 0:
            problems.append(f"{pname} leaves its ball by up to {v:.3g}")
    logits = torch.cat(logits_parts)
    gap = float((logits - result.logits).abs().max())
    return Verification(
        passed=not problems,
        input_violation=input_violation,
        weight_violation=weight_violation,
        logits=logits,
        correct=logits.argmax(dim=1) == y,
        max_logit_gap=gap,
        problems=problems,
    )
