"""The threat model T(eps_x, eps_w) of THEORY.md section 2: a validated, immutable description.

Every attack, checker and bound reads the threat set from here and nowhere else, so the radii below
(`input_bounds`, `weight_radius`, `operator_radius`, `bias_radius`) *are* the definition of the set, and
`layer_radii` is the one place that picks, per weight layer, which of them apply (the attack's weight blocks and
the bounds' per-layer threat both call it; the checker derives its balls on its own, on purpose).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Any, TypeAlias

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from torch import Tensor, nn

__all__ = ["PERTURBABLE_TYPES", "EpsMode", "LayerRadii", "PerturbableLayer", "Scope", "ThreatModel", "WeightBall"]

#: Module types whose `weight` (and `bias`) the threat can perturb.
PERTURBABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)

#: A module of one of PERTURBABLE_TYPES.
PerturbableLayer: TypeAlias = nn.Linear | nn.Conv1d | nn.Conv2d


class WeightBall(str, Enum):
    """Shape of the weight ball: element-wise box, or the l_inf operator-norm ball of each matrix."""

    ELEMENTWISE = "elementwise"
    OPERATOR = "operator"


class EpsMode(str, Enum):
    """Whether eps_w (and eps_b) are absolute sizes or fractions of the weights' own size."""

    ABSOLUTE = "absolute"
    RELATIVE = "relative"


class Scope(str, Enum):
    """Per-example: the adversary picks weights per input (worst case). Shared: one weight perturbation for all."""

    PER_EXAMPLE = "per-example"
    SHARED = "shared"


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class LayerRadii:
    """The radii the threat gives one weight layer, in the dtype of the weight they were derived from
    (`ThreatModel.layer_radii`).

    Attributes:
        name: module name.
        ball: element-wise box or operator-norm ball.
        e: operator ball: ||D||_inf <= e (0-dim); None under the element-wise ball.
        beta: |db_i| <= beta_i, (out,); None when biases are not perturbed or the layer has none.
        uniform: element-wise absolute ball without per-channel radii: the one value of every rho_ij (attacks and
            bounds then use a scalar); None otherwise.
        row_eps: element-wise absolute ball with per-channel radii: rho_ij = row_eps_i, (out,); None otherwise.
    """

    name: str
    ball: WeightBall
    e: Tensor | None
    beta: Tensor | None
    uniform: float | None
    row_eps: Tensor | None
    threat: ThreatModel = field(repr=False)
    weight: Tensor = field(repr=False)

    @cached_property
    def rho(self) -> Tensor | None:
        """Element-wise ball: rho with |D_ij| <= rho_ij, the weight's shape (built on first use: a uniform or
        per-row radius often makes it unnecessary); None under the operator ball."""
        if self.ball is not WeightBall.ELEMENTWISE:
            return None
        return self.threat.weight_radius(self.name, self.weight)


def _check_eps(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


class ThreatModel(BaseModel):
    """Joint l_inf threat on inputs and weights.

    Attributes:
        eps_x: input radius in the data's own scale (l_inf), e.g. 0.05 for inputs in [0, 1].
        domain: (lo, hi) bounds of valid inputs; perturbed inputs are clipped to it.
        eps_w: weight radius for every perturbed layer (absolute, or a fraction of the weights in relative mode).
        weight_ball: element-wise box per weight, or operator (l_inf induced) norm ball per matrix.
        weight_mode: absolute radius, or relative to |W| (element-wise) / ||W||_inf (operator).
        layer_eps: per-layer overrides of eps_w, keyed by module name (as in `model.named_modules()`).
        channel_eps: per-output-channel radii of a layer (element-wise ball only), keyed by module name: a vector
            with one radius per row of the weight (output feature / output channel), in the weight mode's units.
            Overrides eps_w and layer_eps for that layer; quantization grids with one scale per channel use it.
        layers: module names to perturb; None perturbs every Linear/Conv weight matrix.
        eps_b: bias radius (0: biases unperturbed), in the same mode as the weights.
        scope: per-example (one weight perturbation per input) or shared (one for all inputs).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    eps_x: float = 0.0
    domain: tuple[float, float] = (0.0, 1.0)
    eps_w: float = 0.0
    weight_ball: WeightBall = WeightBall.ELEMENTWISE
    weight_mode: EpsMode = EpsMode.ABSOLUTE
    layer_eps: tuple[tuple[str, float], ...] = ()
    channel_eps: tuple[tuple[str, tuple[float, ...]], ...] = ()
    layers: tuple[str, ...] | None = None
    eps_b: float = 0.0
    scope: Scope = Scope.PER_EXAMPLE

    @field_validator("eps_x", "eps_w", "eps_b", mode="before")
    @classmethod
    def _eps_valid(cls, value: Any, info: Any) -> float:
        return _check_eps(info.field_name, value)

    @field_validator("layer_eps", mode="before")
    @classmethod
    def _layer_eps_valid(cls, value: Any) -> tuple[tuple[str, float], ...]:
        items = value.items() if isinstance(value, Mapping) else value
        return tuple(sorted((str(k), _check_eps(f"layer_eps[{k}]", v)) for k, v in items))

    @field_validator("channel_eps", mode="before")
    @classmethod
    def _channel_eps_valid(cls, value: Any) -> tuple[tuple[str, tuple[float, ...]], ...]:
        items = value.items() if isinstance(value, Mapping) else value
        out = []
        for name, radii in items:
            values = tuple(_check_eps(f"channel_eps[{name}]", float(r)) for r in radii)
            if not values:
                raise ValueError(f"channel_eps[{name}] holds no radius")
            out.append((str(name), values))
        return tuple(sorted(out))

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_valid(cls, value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        names = tuple(str(v) for v in value)
        if not names:
            raise ValueError("layers must name at least one layer, or be None for all weight layers")
        if len(set(names)) != len(names):
            raise ValueError(f"layers lists a layer twice: {names}")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> ThreatModel:
        lo, hi = self.domain
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise ValueError(f"domain must be finite with lo < hi, got {self.domain}")
        if self.eps_x > hi - lo:
            raise ValueError(f"eps_x={self.eps_x} exceeds the width of the domain {self.domain}")
        if self.channel_eps and self.weight_ball is not WeightBall.ELEMENTWISE:
            raise ValueError("channel_eps (per-channel radii) applies to the elementwise weight ball only")
        overlap = sorted(set(dict(self.channel_eps)) & set(dict(self.layer_eps)))
        if overlap:
            raise ValueError(f"layers {overlap} have both a layer_eps and a channel_eps radius; give one")
        if self.layers is not None:
            unknown = [k for k, _ in (*self.layer_eps, *self.channel_eps) if k not in self.layers]
            if unknown:
                raise ValueError(f"layer_eps names layers outside the selection `layers`: {unknown}")
        return self

    # ----------------------------------------------------------------- derived threats
    def input_only(self) -> ThreatModel:
        """The same threat with weights and biases left alone."""
        return self.model_copy(update={"eps_w": 0.0, "layer_eps": (), "channel_eps": (), "eps_b": 0.0})

    def weight_only(self) -> ThreatModel:
        """The same threat with inputs left alone."""
        return self.model_copy(update={"eps_x": 0.0})

    def scaled(self, factor: float) -> ThreatModel:
        """Every radius (eps_x, eps_w, eps_b, layer_eps, channel_eps) times `factor` >= 0, the shape unchanged.

        eps_x is not re-validated: a caller scaling past the domain's width gets a box the domain clips.
        """
        if not (math.isfinite(factor) and factor >= 0):
            raise ValueError(f"a threat's radii scale by a finite factor >= 0, got {factor}")
        return self.model_copy(
            update={
                "eps_x": self.eps_x * factor,
                "eps_w": self.eps_w * factor,
                "eps_b": self.eps_b * factor,
                "layer_eps": tuple((name, r * factor) for name, r in self.layer_eps),
                "channel_eps": tuple((name, tuple(r * factor for r in radii)) for name, radii in self.channel_eps),
            }
        )

    def with_scope(self, scope: Scope | str) -> ThreatModel:
        return self.model_copy(update={"scope": Scope(scope)})

    @property
    def perturbs_input(self) -> bool:
        return self.eps_x > 0

    @property
    def perturbs_weights(self) -> bool:
        return (
            self.eps_w > 0
            or self.eps_b > 0
            or any(v > 0 for _, v in self.layer_eps)
            or any(max(v) > 0 for _, v in self.channel_eps)
        )

    @property
    def kind(self) -> str:
        """'joint', 'input', 'weight' or 'none'."""
        if self.perturbs_input and self.perturbs_weights:
            return "joint"
        if self.perturbs_input:
            return "input"
        return "weight" if self.perturbs_weights else "none"

    def describe(self) -> dict[str, Any]:
        """Plain-JSON description with every field, for reports."""
        data = self.model_dump(mode="json")
        data["layer_eps"] = dict(self.layer_eps)
        data["channel_eps"] = {k: list(v) for k, v in self.channel_eps}
        data["kind"] = self.kind
        return data

    def __str__(self) -> str:
        parts = [
            f"eps_x={self.eps_x:g}",
            f"eps_w={self.eps_w:g}",
            self.weight_ball.value,
            self.weight_mode.value,
        ]
        if self.eps_b:
            parts.append(f"eps_b={self.eps_b:g}")
        if self.layer_eps:
            parts.append("layer_eps=" + ",".join(f"{k}:{v:g}" for k, v in self.layer_eps))
        if self.channel_eps:
            parts.append("channel_eps=" + ",".join(f"{k}:{min(v):.3g}..{max(v):.3g}" for k, v in self.channel_eps))
        parts.append("layers=" + (",".join(self.layers) if self.layers else "all"))
        parts.append(self.scope.value)
        parts.append(f"domain=[{self.domain[0]:g},{self.domain[1]:g}]")
        return " ".join(parts)

    # ----------------------------------------------------------------- the threat set
    def eps_w_for(self, name: str) -> float:
        """Weight radius of layer `name`: the largest of its channel_eps, else its layer_eps override, else eps_w."""
        channels = dict(self.channel_eps).get(name)
        if channels is not None:
            return max(channels)
        return dict(self.layer_eps).get(name, self.eps_w)

    def uniform_radius(self, name: str) -> float | None:
        """The single value of rho for layer `name` when rho is the same for every weight (element-wise,
        absolute, no per-channel radii), which lets attacks and bounds use a scalar; None otherwise."""
        if self.weight_ball is not WeightBall.ELEMENTWISE or self.weight_mode is not EpsMode.ABSOLUTE:
            return None
        return None if name in dict(self.channel_eps) else self.eps_w_for(name)

    def weight_layers(self, model: nn.Module) -> list[tuple[str, PerturbableLayer]]:
        """The (name, module) pairs whose weights the threat perturbs, in module order.

        Raises:
            ValueError: a selected or overridden layer does not exist or is not a Linear/Conv layer.
        """
        modules = dict(model.named_modules())
        if self.layers is None:
            chosen = [(n, m) for n, m in modules.items() if isinstance(m, PERTURBABLE_TYPES)]
        else:
            chosen = []
            for name in self.layers:
                if name not in modules:
                    raise ValueError(f"layers names '{name}', which the model does not have")
                module = modules[name]
                if not isinstance(module, PERTURBABLE_TYPES):
                    kind = type(module).__name__
                    raise ValueError(f"layer '{name}' is a {kind}; only Linear, Conv1d and Conv2d can be perturbed")
                chosen.append((name, module))
        names = {n for n, _ in chosen}
        for name, _ in self.layer_eps:
            if name not in names:
                raise ValueError(f"layer_eps names '{name}', which is not a perturbable layer of the model")
        for name, radii in self.channel_eps:
            if name not in names:
                raise ValueError(f"channel_eps names '{name}', which is not a perturbable layer of the model")
            rows = dict(chosen)[name].weight.shape[0]
            if len(radii) != rows:
                raise ValueError(f"channel_eps[{name}] has {len(radii)} radii for {rows} output channels")
        if not self.perturbs_weights:
            return []
        return [(n, m) for n, m in chosen if self.eps_w_for(n) > 0 or self.eps_b > 0]

    def check_resolvable(self, model: nn.Module) -> None:
        """Refuse radii so large against the weights they perturb that the model's dtype cannot hold W + D with
        any digit of W left (a radius above max |W| / machine epsilon): the set the arithmetic would explore is
        then not the threat set, and no attack or bound there means anything.

        Raises:
            ValueError: naming the layer, its radius, how many times max |W| (or |b|) that is, and the limit.
        """
        for name, module in self.weight_layers(model):
            pairs: list[tuple[str, Tensor, Tensor | None]] = [("weight", module.weight.detach(), None)]
            if module.bias is not None and self.eps_b > 0:
                pairs.append(("bias", module.bias.detach(), self.bias_radius(module.bias)))
            for kind, value, radius in pairs:
                if radius is None:
                    ball = self.operator_radius if self.weight_ball is WeightBall.OPERATOR else self.weight_radius
                    radius = ball(name, value)
                scale, largest = float(value.abs().max()), float(radius.max())
                limit = scale / torch.finfo(value.dtype).eps
                if scale > 0 and largest > limit:
                    raise ValueError(
                        f"the {kind} radius of layer '{name}' is {largest:.3g}, {largest / scale:.2g} times its "
                        f"largest |{kind}| ({scale:.3g}): in {value.dtype} a perturbed {kind} keeps no digit of the "
                        f"{kind} itself, so no attack or bound at that radius means anything; use a radius below "
                        f"{limit:.3g}"
                    )

    def input_bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Element-wise [lb, ub] of valid perturbed inputs, in x's dtype (THEORY.md section 8)."""
        lo, hi = self.domain
        if x.numel() and (x.min().item() < lo or x.max().item() > hi):
            raise ValueError(
                f"inputs lie outside the domain {self.domain} (min {x.min().item():.4g}, max "
                f"{x.max().item():.4g}); pass data in the domain's scale, with normalisation inside the model"
            )
        lb = torch.clamp(x - self.eps_x, min=lo)
        ub = torch.clamp(x + self.eps_x, max=hi)
        return lb, ub

    def weight_radius(self, name: str, weight: Tensor) -> Tensor:
        """Element-wise ball: rho with |D[i,j]| <= rho[i,j], same shape and dtype as `weight`.

        With channel_eps for the layer, row i (output channel i) has its own radius.
        """
        w = weight.detach()
        channels = dict(self.channel_eps).get(name)
        if channels is not None:
            if len(channels) != w.shape[0]:
                raise ValueError(f"channel_eps[{name}] has {len(channels)} radii for {w.shape[0]} output channels")
            eps_rows = torch.tensor(channels, dtype=w.dtype, device=w.device).reshape(-1, *([1] * (w.dim() - 1)))
            return eps_rows * w.abs() if self.weight_mode is EpsMode.RELATIVE else eps_rows.expand_as(w).clone()
        eps = self.eps_w_for(name)
        if self.weight_mode is EpsMode.RELATIVE:
            return eps * w.abs()
        return torch.full_like(w, eps)

    def operator_radius(self, name: str, weight: Tensor) -> Tensor:
        """Operator ball: e with ||D||_inf <= e (rows of a conv kernel are its output channels); 0-dim tensor."""
        eps = self.eps_w_for(name)
        w = weight.detach()
        if self.weight_mode is EpsMode.RELATIVE:
            return eps * w.reshape(w.shape[0], -1).abs().sum(dim=1).max()
        return torch.tensor(eps, dtype=w.dtype, device=w.device)

    def layer_radii(self, name: str, weight: Tensor, bias: Tensor | None) -> LayerRadii:
        """Which of the radii above apply to weight layer `name`, derived from its `weight` and `bias` (in their
        dtype): the operator radius or the element-wise one (scalar, per row, or per element), and the bias's."""
        w = weight.detach()
        elementwise = self.weight_ball is WeightBall.ELEMENTWISE
        channels = dict(self.channel_eps).get(name) if elementwise and self.weight_mode is EpsMode.ABSOLUTE else None
        return LayerRadii(
            name=name,
            ball=self.weight_ball,
            e=None if elementwise else self.operator_radius(name, w),
            beta=self.bias_radius(bias),
            uniform=self.uniform_radius(name),
            row_eps=None if channels is None else torch.tensor(channels, dtype=w.dtype, device=w.device),
            threat=self,
            weight=w,
        )

    def bias_radius(self, bias: Tensor | None) -> Tensor | None:
        """|db[i]| <= bias_radius[i]; None when biases are not perturbed or the layer has none."""
        if bias is None or self.eps_b == 0:
            return None
        if self.weight_mode is EpsMode.RELATIVE:
            return self.eps_b * bias.detach().abs()
        return torch.full_like(bias.detach(), self.eps_b)
