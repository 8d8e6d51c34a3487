"""Training objectives (THEORY.md section 6): small callables the one trainer calls once per batch.

Each objective maps (model, x, y, step context) to {"loss": scalar, "logits": (N, K), ...more scalars to log}.
The adversarial ones find their perturbation with the library's own attack loop (`attacks.PGD`, with the
kl-clean loss for TRADES) and then train at the perturbed point: weight perturbations enter
the forward pass through the same hooks the attacks use, so the gradient with respect to W is the gradient at
W + D with D held fixed (as AWP does), and the user's parameters are never modified.

Every objective is registered at the end of this module as a `registry.ObjectiveSpec`; names combine with "+":
- one base: standard, pgd-at, trades, joint-at or ibp-certified;
- modifiers wrap it: awp adds a shared, layer-wise relative weight perturbation to standard, pgd-at or trades
  (pgd-at+awp is Wu et al.'s AT-AWP, trades+awp their TRADES-AWP); bound-reg adds Theorem 2's sensitivity
  terms to any base (bound-reg alone: cross-entropy + the terms).

Data-parallel training (see `parallel`): `model` may be a DistributedDataParallel wrapper and x this rank's share
of the batch. Forwards whose gradient trains the weights go through `model`; inner maximisations and bounds run
on `parallel.inner(model)` and in eval mode (PGD, the KL ascent and the bounds set it), so they neither
synchronise anything nor move BatchNorm running statistics. Only the training forwards run in train mode:
BatchNorm statistics follow the batches the loss is computed on, the clean one (standard, ibp-certified,
bound-reg's base), the perturbed one (pgd-at, awp, joint-at train at the adversarial point only), or both
(trades). A weight perturbation shared by the batch is found from gradients summed over all ranks, so every
rank trains at the same perturbed weights; per-example perturbations need no communication.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import PGD, Loss
from ..attacks.perturbation import WeightBlock, installed
from ..bounds import ibp_margin_bounds, loss_bound_from_margins, sensitivity_terms
from ..runtime import distributed as dist
from ..threat import EpsMode, Scope, ThreatModel
from . import parallel
from .config import TrainConfig
from .registry import (
    Objective,
    ObjectiveSpec,
    Role,
    StepContext,
    config_default,
    parse_objective,
    register_objective,
    split_objective,
)

__all__ = [
    "Adversarial",
    "BoundRegularized",
    "IBPCertified",
    "Standard",
    "Trades",
    "build_objective",
    "trained_threat",
    "training_threat",
]


def trained_threat(objective: Objective) -> dict[str, Any] | None:
    """The threat the objective trains against (the adversary's, else the bound's); None for standard."""
    description = objective.describe()
    threat: dict[str, Any] | None
    if "base" in description and "threat" in description["base"]:
        threat = description["base"]["threat"]
    else:
        threat = description.get("threat")
    return threat


def scaled_threat(threat: ThreatModel, scale: float) -> ThreatModel:
    """The threat with every radius (per-layer and per-channel ones too) times `scale` in [0, 1] (warm-up)."""
    return threat if scale >= 1.0 else threat.scaled(scale)


def _frozen(blocks: list[WeightBlock]) -> list[WeightBlock]:
    """The attack's variables stop tracking gradients: training differentiates the weights, not D."""
    for blk in blocks:
        blk.differentiates_parameters = True
        for v in blk.variables:
            v.requires_grad_(False)
    return blocks


# ---------------------------------------------------------------------------------------------- objectives
@dataclass(frozen=True)
class Standard:
    """Cross-entropy on the clean batch."""

    def describe(self) -> dict[str, Any]:
        return {"kind": "standard"}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        logits = model(x)
        return {"loss": F.cross_entropy(logits, y), "logits": logits}


@dataclass(frozen=True)
class Adversarial:
    """Cross-entropy at the worst point PGD finds in `threat` (Madry et al. with weights as extra variables).

    pgd-at: an input-only threat. awp: weight-only, shared per batch, relative element-wise radii (the
    box |D_ij| <= gamma |W_ij| lies inside Wu et al.'s layer-wise ball ||D_l||_F <= gamma ||W_l||_F).
    joint-at: the joint threat, per example through Lemma 1 (cost of input-only PGD) or shared per batch.
    """

    threat: ThreatModel
    steps: int = 7

    def describe(self) -> dict[str, Any]:
        return {"kind": "adversarial", "threat": self.threat.describe(), "attack_steps": self.steps}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        threat = scaled_threat(self.threat, ctx.scale)
        if threat.kind == "none":
            return Standard()(model, x, y, ctx)
        # One batch per attack call so every example's perturbation lives in one set of blocks. A shared
        # perturbation sums its gradient over ranks: every rank holds the one perturbation of the global batch.
        attack = PGD(steps=self.steps, batch_size=len(x), seed=ctx.seed)
        sync = threat.scope is Scope.SHARED and dist.is_distributed()
        result = attack(parallel.inner(model), x, y, threat, first_index=ctx.first_index, sync_ranks=sync)
        with installed(_frozen(result.weight_blocks())):
            logits = model(result.x_adv.detach())
        return {"loss": F.cross_entropy(logits, y), "logits": logits}


@dataclass(frozen=True)
class Trades:
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta KL(f(x) || f'(x')), (x', W') maximising the KL term.

    The maximisation is the one PGD loop with the kl-clean loss (inputs, and weights when the threat has them),
    started next to the clean point (the KL gradient vanishes at it; TRADES starts at 0.001 N(0, 1)) and keeping
    each example's highest-KL point. Its clean prediction is the eval-mode one the attack sees; the training
    term below uses this step's own (train-mode) clean logits, as TRADES does.
    """

    threat: ThreatModel
    steps: int = 7
    beta: float = 6.0

    #: the random start lies in this fraction of the threat set
    START_RADIUS = 0.01

    def describe(self) -> dict[str, Any]:
        return {"kind": "trades", "threat": self.threat.describe(), "attack_steps": self.steps, "beta": self.beta}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        threat = scaled_threat(self.threat, ctx.scale)
        if threat.kind == "none" or self.beta == 0:
            return {"loss": ce, "logits": logits, "kl": torch.zeros(())}
        attack = PGD(
            steps=self.steps, loss=Loss.KL_CLEAN, start_radius=self.START_RADIUS, batch_size=len(x), seed=ctx.seed
        )
        sync = threat.scope is Scope.SHARED and dist.is_distributed()
        result = attack(parallel.inner(model), x, y, threat, first_index=ctx.first_index, sync_ranks=sync)
        with installed(_frozen(result.weight_blocks())):
            adv_logits = model(result.x_adv.detach())
        target = F.softmax(logits.detach(), dim=1)
        kl = F.kl_div(F.log_softmax(adv_logits, dim=1), target, reduction="batchmean")
        return {"loss": ce + self.beta * kl, "logits": logits, "kl": kl.detach()}


@dataclass(frozen=True)
class IBPCertified:
    """Certified training on the joint IBP margin bounds (Gowal et al. 2018, with Lemma 1's weight term).

    loss = kappa CE(f(x), y) + (1 - kappa) CE(worst-case logits), the worst case from the margin lower bounds
    (an upper bound on the loss over the per-example joint threat). kappa ramps from 1 to `kappa` with the
    epsilon warm-up, as Gowal et al. do.
    """

    threat: ThreatModel
    kappa: float = 0.5

    def describe(self) -> dict[str, Any]:
        return {"kind": "ibp-certified", "threat": self.threat.describe(), "kappa": self.kappa}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        threat = scaled_threat(self.threat, ctx.scale)
        if threat.kind == "none":
            return {"loss": ce, "logits": logits, "robust_ce": ce.detach()}
        bounds = ibp_margin_bounds(parallel.inner(model), x, y, threat, rounding=False)  # a loss, not a certificate
        robust = loss_bound_from_margins(bounds.lower, y).mean()
        kappa = 1.0 - ctx.scale * (1.0 - self.kappa)
        return {"loss": kappa * ce + (1 - kappa) * robust, "logits": logits, "robust_ce": robust.detach()}


@dataclass(frozen=True)
class BoundRegularized:
    """`base` + lambda_x R_x + lambda_w R_w, the batch means of Theorem 2's sensitivity terms.

    At lambda_x = lambda_w = 2 with the standard base, the objective upper-bounds the worst-case joint loss.
    Products of layer norms grow exponentially with depth; `log_domain` penalises log R_x and log R_w instead
    (the gradient is that of R divided by R: a relative penalty that does not explode, but the sum is then no
    longer a bound on the loss). A term whose radius is 0 is left out (its log would be a constant floor).

    `margin_hinge` penalises the bound only where it could flip the prediction: Theorem 2 bounds the change of
    every logit margin by 2 (R_x + R_w), so an example whose clean margin m = z_y - max_{j != y} z_j exceeds it
    is certified and adds nothing; the others add 2 lambda_x R_x + 2 lambda_w R_w - (lambda_x + lambda_w) m / 2,
    i.e. lambda relu(2 (R_x + R_w) - m) when lambda_x = lambda_w = lambda (the batch mean over all examples).
    """

    base: Objective
    threat: ThreatModel
    lambda_x: float = 0.01
    lambda_w: float = 0.01
    log_domain: bool = False
    margin_hinge: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "bound-regularized",
            "base": self.base.describe(),
            "threat": self.threat.describe(),
            "lambda_x": self.lambda_x,
            "lambda_w": self.lambda_w,
            "log_domain": self.log_domain,
            "margin_hinge": self.margin_hinge,
        }

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        out = dict(self.base(model, x, y, ctx))
        threat = scaled_threat(self.threat, ctx.scale)
        zero = torch.zeros((), dtype=out["loss"].dtype, device=out["loss"].device)
        r_x = r_w = zero
        penalty = zero
        if threat.kind != "none" and (self.lambda_x > 0 or self.lambda_w > 0):
            terms = sensitivity_terms(parallel.inner(model), x, threat, log_domain=self.log_domain)
            per_x = terms.r_x if threat.perturbs_input else torch.zeros_like(terms.r_x)
            per_w = terms.r_w if threat.perturbs_weights else torch.zeros_like(terms.r_w)
            r_x, r_w = per_x.mean(), per_w.mean()
            penalty = self.lambda_x * r_x + self.lambda_w * r_w
            if self.margin_hinge:
                logits = parallel.inner(model)(x)  # clean logits (a base may return adversarial ones)
                true = logits.gather(1, y[:, None]).squeeze(1)
                other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
                margin = true - other
                # Only the examples whose margin the bound does not clear; the margin term pushes it up there.
                exceeds = (2 * (per_x + per_w) > margin).to(margin.dtype)
                each = (
                    2 * self.lambda_x * per_x + 2 * self.lambda_w * per_w - (self.lambda_x + self.lambda_w) / 2 * margin
                )
                penalty = (exceeds * each).mean()
        out["loss"] = out["loss"] + penalty
        out["r_x"], out["r_w"] = r_x.detach(), r_w.detach()
        return out


# ---------------------------------------------------------------------------------------------- composition
def training_threat(config: TrainConfig) -> ThreatModel:
    """The threat an objective trains against, with the objective's defaults for eps_w and weight_mode.

    The config's radii, ball and scope, the parts' defaults for what the config leaves None, then each
    modifier's `adjust_threat` (awp: shared per batch, weights only on the standard base). The bases take
    what they attack from it (pgd-at and trades the input part unless awp adds the weights).
    """
    parts = parse_objective(config.objective)
    base, modifiers = split_objective(parts)
    eps_w = config.eps_w if config.eps_w is not None else config_default(parts, "eps_w", config)
    mode = config.weight_mode if config.weight_mode is not None else config_default(parts, "weight_mode", config)
    threat = ThreatModel(
        eps_x=config.eps_x, eps_w=eps_w, weight_ball=config.weight_ball, weight_mode=mode, scope=config.scope
    )
    for modifier in modifiers:
        if modifier.adjust_threat is not None:
            threat = modifier.adjust_threat(threat, base)
    return threat


def build_objective(config: TrainConfig) -> Objective:
    """The objective `config.objective` names: its base built, then wrapped by each modifier in order."""
    parts = parse_objective(config.objective)
    base, modifiers = split_objective(parts)
    threat = training_threat(config)
    objective = base.build(threat, **_options(base, config))
    for modifier in modifiers:
        objective = modifier.build(objective, threat, **_options(modifier, config))
    return objective


def _options(spec: ObjectiveSpec, config: TrainConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in spec.options}


# ---------------------------------------------------------------------------------------------- registrations
# One spec per objective; a new objective is its class (or function) above plus one register_objective call.
def _awp(inner: Objective, threat: ThreatModel, *, attack_steps: int) -> Objective:
    """Add the (shared, relative) weight perturbation to the base's adversary; standard becomes weight-only AT."""
    if isinstance(inner, Standard):
        return Adversarial(threat.weight_only(), attack_steps)
    if isinstance(inner, Adversarial | Trades):
        return replace(inner, threat=threat)
    raise TypeError(f"awp cannot modify {type(inner).__name__}")


def _awp_threat(threat: ThreatModel, base: ObjectiveSpec) -> ThreatModel:
    """awp alone is weight-only adversarial training; its weight perturbation is shared per batch."""
    return (threat.weight_only() if base.name == "standard" else threat).with_scope(Scope.SHARED)


register_objective(ObjectiveSpec(name="standard", role=Role.BASE, build=lambda threat: Standard(), summary="CE"))
register_objective(
    ObjectiveSpec(
        name="pgd-at",
        role=Role.BASE,
        build=lambda threat, attack_steps: Adversarial(threat.input_only(), attack_steps),
        options=("attack_steps",),
        summary="CE at the worst input (Madry et al.)",
    )
)
register_objective(
    ObjectiveSpec(
        name="trades",
        role=Role.BASE,
        build=lambda threat, attack_steps, trades_beta: Trades(threat.input_only(), attack_steps, trades_beta),
        options=("attack_steps", "trades_beta"),
        summary="CE + beta KL to the worst input (Zhang et al.)",
    )
)
register_objective(
    ObjectiveSpec(
        name="awp",
        role=Role.MODIFIER,
        build=_awp,
        options=("attack_steps",),
        defaults={"eps_w": 0.005, "weight_mode": EpsMode.RELATIVE},
        adjust_threat=_awp_threat,
        modifies=("standard", "pgd-at", "trades"),
        summary="adds a weight perturbation shared per batch, relative (Wu et al.)",
    )
)
register_objective(
    ObjectiveSpec(
        name="joint-at",
        role=Role.BASE,
        build=lambda threat, attack_steps: Adversarial(threat, attack_steps),
        options=("attack_steps",),
        honours_scope=True,
        summary="CE at the worst (input, weights), per example via Lemma 1 or shared",
    )
)
register_objective(
    ObjectiveSpec(
        name="bound-reg",
        role=Role.MODIFIER,
        build=lambda inner, threat, lambda_x, lambda_w, log_domain, margin_hinge: BoundRegularized(
            inner, threat.with_scope(Scope.PER_EXAMPLE), lambda_x, lambda_w, log_domain, margin_hinge
        ),
        options=("lambda_x", "lambda_w", "log_domain", "margin_hinge"),
        summary="adds lambda_x R_x + lambda_w R_w (Theorem 2)",
    )
)
register_objective(
    ObjectiveSpec(
        name="ibp-certified",
        role=Role.BASE,
        build=lambda threat, ibp_kappa: IBPCertified(threat.with_scope(Scope.PER_EXAMPLE), ibp_kappa),
        options=("ibp_kappa",),
        # Interval bounds of an untrained network are too loose to train on: warm up over half the epochs.
        defaults={"warmup_epochs": lambda config: config.epochs // 2},
        summary="kappa CE + (1 - kappa) CE at the IBP worst case",
    )
)
