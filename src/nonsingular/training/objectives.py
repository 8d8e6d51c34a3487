"""Training objectives (THEORY.md section 6): small callables the one trainer calls once per batch.

Each objective maps (model, x, y, step context) to {"loss": scalar, "logits": (N, K), ...more scalars to log}.
The adversarial ones find their perturbation with the library's own machinery (`attacks.PGD`, or the
`perturbation` blocks for TRADES' KL ascent) and then train at the perturbed point: weight perturbations enter
the forward pass through the same hooks the attacks use, so the gradient with respect to W is the gradient at
W + D with D held fixed (as AWP does), and the user's parameters are never modified.

Names combine with "+" where that makes sense:
- one base: standard, pgd-at, trades, joint-at or ibp-certified;
- awp adds a shared, layer-wise relative weight perturbation to standard, pgd-at or trades (pgd-at+awp is
  Wu et al.'s AT-AWP, trades+awp their TRADES-AWP);
- bound-reg adds Theorem 2's sensitivity terms to any base (bound-reg alone: cross-entropy + the terms).

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

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed as dist
from ..attacks import PGD
from ..bounds import ibp_margin_bounds, loss_bound_from_margins, sensitivity_terms
from ..perturbation import WeightBlock, build_weight_blocks, installed, layer_paths
from ..threat import EpsMode, Scope, ThreatModel
from . import parallel
from .config import TrainConfig

__all__ = [
    "Adversarial",
    "BoundRegularized",
    "IBPCertified",
    "Objective",
    "ObjectiveName",
    "Standard",
    "StepContext",
    "Trades",
    "build_objective",
    "parse_objective",
    "trained_threat",
    "training_threat",
]


class ObjectiveName(str, Enum):
    """Objective names; the string values are what configs and the CLI accept."""

    STANDARD = "standard"
    PGD_AT = "pgd-at"
    TRADES = "trades"
    AWP = "awp"
    JOINT_AT = "joint-at"
    BOUND_REG = "bound-reg"
    IBP_CERTIFIED = "ibp-certified"


_BASES = (
    ObjectiveName.STANDARD,
    ObjectiveName.PGD_AT,
    ObjectiveName.TRADES,
    ObjectiveName.JOINT_AT,
    ObjectiveName.IBP_CERTIFIED,
)
_AWP_BASES = (ObjectiveName.STANDARD, ObjectiveName.PGD_AT, ObjectiveName.TRADES)


def parse_objective(spec: str | ObjectiveName | Sequence[str | ObjectiveName]) -> tuple[ObjectiveName, ...]:
    """Names of an objective in canonical order (base, awp, bound-reg); "standard" is dropped when combined.

    Raises:
        ValueError: an unknown name, a repeated name, two bases, or awp on a base it cannot modify.
    """
    if isinstance(spec, ObjectiveName):
        tokens: list[str | ObjectiveName] = [spec]
    elif isinstance(spec, str):
        tokens = [t.strip() for t in spec.split("+")]
    else:
        tokens = list(spec)
    names: list[ObjectiveName] = []
    for token in tokens:
        try:
            names.append(ObjectiveName(token))
        except ValueError:
            known = ", ".join(n.value for n in ObjectiveName)
            raise ValueError(f"unknown objective {str(token)!r}; known: {known} (combine with '+')") from None
    if len(set(names)) != len(names):
        raise ValueError(f"objective {spec!r} names a part twice")
    bases = [n for n in names if n in _BASES]
    if len(bases) > 1:
        raise ValueError(f"objective {spec!r} combines {bases[0].value} and {bases[1].value}; use one base")
    base = bases[0] if bases else ObjectiveName.STANDARD
    if ObjectiveName.AWP in names and base not in _AWP_BASES:
        raise ValueError(f"awp cannot be combined with {base.value} (it already perturbs weights or bounds them)")
    extras = [n for n in (ObjectiveName.AWP, ObjectiveName.BOUND_REG) if n in names]
    if base is ObjectiveName.STANDARD and extras:
        return tuple(extras)
    return (base, *extras)


@dataclass(frozen=True)
class StepContext:
    """What an objective needs to know about the current step.

    Attributes:
        scale: epsilon warm-up factor in [0, 1]; the training threat's radii are multiplied by it.
        seed: seed of this step's random starts (derived from the run seed, epoch and step: resumable).
        first_index: position of x[0] in the global batch when x is this rank's share of it (else 0).
        n_batch: examples in the global batch over all ranks; None: x is the whole batch.
    """

    scale: float = 1.0
    seed: int = 0
    first_index: int = 0
    n_batch: int | None = None


class Objective(Protocol):
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        """Loss and logits on a batch: x (N, *input_shape) in the data domain, y (N,) labels.

        The loss is a mean over the N examples (the trainer reweighs unequal shares of a distributed batch).
        """
        ...

    def describe(self) -> dict[str, Any]:
        """Plain-JSON description (kind, threat in full, hyper-parameters) for the checkpoint."""
        ...


def trained_threat(objective: Objective) -> dict[str, Any] | None:
    """The threat the objective trains against (the adversary's, else the bound's); None for standard."""
    description = objective.describe()
    if "base" in description and "threat" in description["base"]:
        return description["base"]["threat"]
    return description.get("threat")


def scaled_threat(threat: ThreatModel, scale: float) -> ThreatModel:
    """The threat with every radius multiplied by `scale` in [0, 1] (stays valid, hence no re-validation)."""
    if scale >= 1.0:
        return threat
    return threat.model_copy(
        update={
            "eps_x": threat.eps_x * scale,
            "eps_w": threat.eps_w * scale,
            "eps_b": threat.eps_b * scale,
            "layer_eps": tuple((k, v * scale) for k, v in threat.layer_eps),
        }
    )


def _frozen(blocks: list[WeightBlock]) -> list[WeightBlock]:
    """The attack's variables stop tracking gradients: training differentiates the weights, not D."""
    for blk in blocks:
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

    The attacks ascend cross-entropy or margin only, so the KL ascent is its own short sign-gradient loop over
    the same perturbation blocks (inputs, and weights when the threat has them).
    """

    threat: ThreatModel
    steps: int = 7
    beta: float = 6.0

    def describe(self) -> dict[str, Any]:
        return {"kind": "trades", "threat": self.threat.describe(), "attack_steps": self.steps, "beta": self.beta}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        threat = scaled_threat(self.threat, ctx.scale)
        if threat.kind == "none" or self.beta == 0:
            return {"loss": ce, "logits": logits, "kl": torch.zeros(())}
        target = F.softmax(logits.detach(), dim=1)
        x_adv, blocks = self._maximise_kl(parallel.inner(model), x, target, threat, ctx)
        with installed(blocks):
            adv_logits = model(x_adv)
        kl = F.kl_div(F.log_softmax(adv_logits, dim=1), target, reduction="batchmean")
        return {"loss": ce + self.beta * kl, "logits": logits, "kl": kl.detach()}

    def _maximise_kl(
        self, model: nn.Module, x: Tensor, target: Tensor, threat: ThreatModel, ctx: StepContext
    ) -> tuple[Tensor, list[WeightBlock]]:
        generator = torch.Generator().manual_seed(ctx.seed)
        sync = threat.scope is Scope.SHARED and dist.is_distributed()
        frac = 2.5 / self.steps
        lb, ub = threat.input_bounds(x)
        was_training = model.training
        model.eval()
        try:
            paths = layer_paths(model, threat, x[: min(2, len(x))])
            blocks = build_weight_blocks(model, threat, paths, len(x))
            # The KL gradient vanishes at the clean point: start close to it (TRADES uses 0.001 N(0, 1)). Every
            # rank draws the whole batch's noise and keeps its rows: the same start as one process, and the
            # generator is left where a shared weight start draws the same numbers on every rank.
            n_batch = ctx.n_batch if ctx.n_batch is not None else len(x)
            noise = torch.randn((n_batch, *x.shape[1:]), generator=generator)
            noise = 0.001 * noise[ctx.first_index : ctx.first_index + len(x)].to(x)
            x_adv = torch.minimum(torch.maximum(x + noise, lb), ub).detach()
            for blk in blocks:
                blk.random_start(generator)
                for v in blk.variables:
                    v.mul_(0.001).requires_grad_()
            variables = [v for blk in blocks for v in blk.variables]
            for _ in range(self.steps):
                x_adv.requires_grad_(threat.perturbs_input)
                with torch.enable_grad(), installed(blocks):
                    log_p = F.log_softmax(model(x_adv), dim=1)
                    kl = F.kl_div(log_p, target, reduction="sum")
                wrt = ([x_adv] if threat.perturbs_input else []) + variables
                grads = list(torch.autograd.grad(kl, wrt))
                if sync:  # the summed KL's gradient over the global batch
                    dist.all_reduce_sum_(grads[len(wrt) - len(variables) :])
                with torch.no_grad():
                    if threat.perturbs_input:
                        step = frac * threat.eps_x * torch.sign(grads.pop(0))
                        x_adv = torch.minimum(torch.maximum(x_adv + step, lb), ub)
                    k = 0
                    for blk in blocks:
                        blk.ascend(grads[k : k + len(blk.variables)], frac)
                        k += len(blk.variables)
                x_adv = x_adv.detach()
        finally:
            model.train(was_training)
        return x_adv, _frozen(blocks)


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
        bounds = ibp_margin_bounds(parallel.inner(model), x, y, threat)
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
    """

    base: Objective
    threat: ThreatModel
    lambda_x: float = 0.01
    lambda_w: float = 0.01
    log_domain: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "bound-regularized",
            "base": self.base.describe(),
            "threat": self.threat.describe(),
            "lambda_x": self.lambda_x,
            "lambda_w": self.lambda_w,
            "log_domain": self.log_domain,
        }

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        out = dict(self.base(model, x, y, ctx))
        threat = scaled_threat(self.threat, ctx.scale)
        zero = torch.zeros((), dtype=out["loss"].dtype, device=out["loss"].device)
        r_x = r_w = zero
        if threat.kind != "none" and (self.lambda_x > 0 or self.lambda_w > 0):
            terms = sensitivity_terms(parallel.inner(model), x, threat, log_domain=self.log_domain)
            if threat.perturbs_input:
                r_x = terms.r_x.mean()
            if threat.perturbs_weights:
                r_w = terms.r_w.mean()
        out["loss"] = out["loss"] + self.lambda_x * r_x + self.lambda_w * r_w
        out["r_x"], out["r_w"] = r_x.detach(), r_w.detach()
        return out


# ---------------------------------------------------------------------------------------------- factory
#: Defaults of the weight radius when the config leaves it out: (eps_w, mode).
AWP_DEFAULT = (0.005, EpsMode.RELATIVE)
JOINT_DEFAULT = (0.002, EpsMode.ABSOLUTE)


def training_threat(config: TrainConfig) -> ThreatModel:
    """The threat an objective trains against, with the objective's defaults for eps_w and weight_mode.

    awp: weight perturbation shared per batch (inputs too when combined with pgd-at or trades), relative by
    default. Every other objective: per-example unless `scope` says shared, absolute by default.
    """
    names = parse_objective(config.objective)
    awp = ObjectiveName.AWP in names
    default_eps, default_mode = AWP_DEFAULT if awp else JOINT_DEFAULT
    eps_x = config.eps_x
    if awp and names[0] not in (ObjectiveName.PGD_AT, ObjectiveName.TRADES):
        eps_x = 0.0  # awp alone is weight-only adversarial training
    return ThreatModel(
        eps_x=eps_x,
        eps_w=default_eps if config.eps_w is None else config.eps_w,
        weight_ball=config.weight_ball,
        weight_mode=default_mode if config.weight_mode is None else config.weight_mode,
        scope=Scope.SHARED if awp else config.scope,
    )


def build_objective(config: TrainConfig) -> Objective:
    """The objective `config.objective` names, configured from `config`."""
    names = parse_objective(config.objective)
    threat = training_threat(config)
    awp = ObjectiveName.AWP in names
    base_name = names[0] if names[0] in _BASES else ObjectiveName.STANDARD
    objective: Objective
    if base_name is ObjectiveName.STANDARD:
        objective = Adversarial(threat.weight_only(), config.attack_steps) if awp else Standard()
    elif base_name is ObjectiveName.PGD_AT:
        objective = Adversarial(threat if awp else threat.input_only(), config.attack_steps)
    elif base_name is ObjectiveName.TRADES:
        objective = Trades(threat if awp else threat.input_only(), config.attack_steps, config.trades_beta)
    elif base_name is ObjectiveName.JOINT_AT:
        objective = Adversarial(threat, config.attack_steps)
    else:
        objective = IBPCertified(threat.with_scope(Scope.PER_EXAMPLE), config.ibp_kappa)
    if ObjectiveName.BOUND_REG in names:
        objective = BoundRegularized(
            objective, threat.with_scope(Scope.PER_EXAMPLE), config.lambda_x, config.lambda_w, config.log_domain
        )
    return objective
