"""Weight quantization grids as threats: certify and attack every rounding of a model to an integer grid.

A layer quantized with step s (one scale per tensor, or one per output channel) stores q = round(W / s) + z
and computes with W_q = (q - z) s. Rounding each weight to *either* neighbouring grid point moves it by at
most s; round-to-nearest by at most s / 2. So the element-wise box of that radius around W contains every
model the grid can produce (any rounding direction, stochastic rounding included, for `Rounding.ANY`), and a
certificate for the box proves that no such quantized model, with eps_x input noise, changes the prediction.

Grids follow the common post-training schemes (as PyTorch's and most deployment tools' observers define
them from the weights' own range):
- symmetric: z = 0, s = max|W| / (2^(b-1) - 1), codes in [-(2^(b-1) - 1), 2^(b-1) - 1];
- asymmetric: s = (max W - min W) / (2^b - 1), z = round(-min W / s), codes in [0, 2^b - 1],
with max / min over the tensor (per-tensor) or over each output channel's row (per-channel).
Activations are not quantized here; see docs/deployment.md for what is and is not covered.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..check import check_attack
from ..runtime import atomic_write
from ..threat import PERTURBABLE_TYPES, EpsMode, Scope, ThreatModel, WeightBall

__all__ = [
    "LayerGrid",
    "QuantizationReport",
    "QuantizationSpec",
    "Rounding",
    "Scheme",
    "evaluate_quantization",
    "layer_grids",
    "nearest_codes",
    "quantization_threat",
    "quantized_accuracy",
    "random_codes",
    "round_to_grid",
    "save_quantized",
]


class Scheme(str, Enum):
    SYMMETRIC = "symmetric"
    ASYMMETRIC = "asymmetric"


class Rounding(str, Enum):
    """nearest: the deployed model rounds to nearest (radius s/2); any: any neighbour may be chosen (radius s)."""

    NEAREST = "nearest"
    ANY = "any"


@dataclass(frozen=True)
class QuantizationSpec:
    """An integer weight grid.

    Attributes:
        bits: bits per weight, 2..16 (`int8` is 8).
        per_channel: one scale per output channel (row of the weight) instead of one per tensor.
        scheme: symmetric (zero point 0) or asymmetric (zero point from the range).
        rounding: the radius the threat gets: s/2 (nearest) or s (any rounding).
    """

    bits: int = 8
    per_channel: bool = False
    scheme: Scheme = Scheme.SYMMETRIC
    rounding: Rounding = Rounding.NEAREST

    def __post_init__(self) -> None:
        object.__setattr__(self, "scheme", Scheme(self.scheme))
        object.__setattr__(self, "rounding", Rounding(self.rounding))
        if not 2 <= self.bits <= 16:
            raise ValueError(f"quantization needs 2 to 16 bits per weight, got {self.bits}")

    @classmethod
    def parse(cls, text: str, **options: Any) -> QuantizationSpec:
        """`int8`, `int4`, `intN` (N in 2..16) to a spec; other fields from `options`."""
        match = re.fullmatch(r"int(\d+)", text.strip().lower())
        if match is None:
            raise ValueError(f"--quantize must be intN, e.g. int8 or int4, got {text!r}")
        return cls(bits=int(match.group(1)), **options)

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.scheme is Scheme.SYMMETRIC else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.scheme is Scheme.SYMMETRIC else 2**self.bits - 1

    def describe(self) -> str:
        granularity = "per-channel" if self.per_channel else "per-tensor"
        return f"int{self.bits} {self.scheme.value} {granularity}, {self.rounding.value} rounding"


@dataclass
class LayerGrid:
    """One layer's grid: W_q = (q - zero_point) * scale, q integer in [qmin, qmax].

    scale and zero_point have shape (C_out, 1, ...) (per-channel) or (1, 1, ...) (per-tensor), broadcastable
    against the weight.
    """

    name: str
    scale: Tensor
    zero_point: Tensor
    qmin: int
    qmax: int

    def codes_nearest(self, weight: Tensor) -> Tensor:
        return torch.clamp(torch.round(weight / self.scale) + self.zero_point, self.qmin, self.qmax)

    def dequantize(self, codes: Tensor) -> Tensor:
        return (codes - self.zero_point) * self.scale

    def describe(self) -> dict[str, Any]:
        scale = self.scale.flatten()
        return {
            "scale_min": float(scale.min()),
            "scale_max": float(scale.max()),
            "channels": int(scale.numel()),
            "zero_point_range": [int(self.zero_point.min()), int(self.zero_point.max())],
        }


def _row_reduce(w: Tensor, per_channel: bool, op: str) -> Tensor:
    shape = (w.shape[0], *([1] * (w.dim() - 1))) if per_channel else (1,) * w.dim()
    rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
    value = rows.amax(dim=1) if op == "max" else rows.amin(dim=1)
    return value.reshape(shape)


def layer_grids(model: nn.Module, spec: QuantizationSpec, layers: list[str] | None = None) -> dict[str, LayerGrid]:
    """The grid of every Linear/Conv weight (or of `layers`), scales from the weights' own range.

    A row (or tensor) of zeros gets scale 1 (any scale represents it exactly).
    """
    modules = dict(model.named_modules())
    names = layers if layers is not None else [n for n, m in modules.items() if isinstance(m, PERTURBABLE_TYPES)]
    grids: dict[str, LayerGrid] = {}
    for name in names:
        w = modules[name].weight.detach()
        if spec.scheme is Scheme.SYMMETRIC:
            scale = _row_reduce(w.abs(), spec.per_channel, "max") / spec.qmax
            zero = torch.zeros_like(scale)
        else:
            hi = _row_reduce(w, spec.per_channel, "max").clamp_min(0)
            lo = _row_reduce(w, spec.per_channel, "min").clamp_max(0)  # the grid holds 0 exactly, as observers do
            scale = (hi - lo) / (spec.qmax - spec.qmin)
            zero = torch.round(-lo / torch.where(scale > 0, scale, torch.ones_like(scale)))
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        grids[name] = LayerGrid(name, scale, zero, spec.qmin, spec.qmax)
    return grids


def quantization_threat(
    model: nn.Module, spec: QuantizationSpec, base: ThreatModel | None = None
) -> tuple[ThreatModel, dict[str, LayerGrid]]:
    """The element-wise box holding every model the grid produces, as per-channel absolute radii.

    Radius per channel: s / 2 (nearest) or s (any rounding); `base` gives eps_x, the domain, the scope and the
    layer selection (its eps_w, ball and mode are replaced).
    """
    base = base if base is not None else ThreatModel()
    grids = layer_grids(model, spec, list(base.layers) if base.layers is not None else None)
    factor = 0.5 if spec.rounding is Rounding.NEAREST else 1.0
    channel_eps = {}
    for name, grid in grids.items():
        rows = dict(model.named_modules())[name].weight.shape[0]
        scale = grid.scale.flatten().double()
        channel_eps[name] = tuple((factor * scale.expand(rows) if scale.numel() == 1 else factor * scale).tolist())
    threat = base.model_copy(
        update={
            "eps_w": 0.0,
            "layer_eps": (),
            "weight_ball": WeightBall.ELEMENTWISE,
            "weight_mode": EpsMode.ABSOLUTE,
        }
    )
    return ThreatModel(**{**threat.model_dump(), "channel_eps": channel_eps}), grids


def round_to_grid(weight: Tensor, target: Tensor, grid: LayerGrid) -> Tensor:
    """Grid codes of `weight` rounded to the neighbour (floor or ceil on the grid) nearer to `target`.

    target: the attack's perturbed weight (same shape as weight, or with a leading example axis); the result
    has target's shape. Each code is one of the two grid points around the weight, so the rounding is a real
    quantization of the model, and keeps the direction the attack chose.
    """
    u = weight / grid.scale + grid.zero_point
    low = torch.clamp(torch.floor(u), grid.qmin, grid.qmax)
    high = torch.clamp(torch.ceil(u), grid.qmin, grid.qmax)
    t = target / grid.scale + grid.zero_point
    return torch.where((t - low).abs() <= (high - t).abs(), low, high).expand_as(target)


def _logits(model: nn.Module, x: Tensor, weights: dict[str, Tensor], per_example: bool) -> Tensor:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        if not per_example:
            return functional_call(model, ({**params, **weights}, buffers), (x,))
        fixed = {k: v for k, v in params.items() if k not in weights}

        def one(w: dict[str, Tensor], xi: Tensor) -> Tensor:
            return functional_call(model, ({**fixed, **w}, buffers), (xi[None],))[0]

        return vmap(one)(weights, x)


def quantized_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    grids: dict[str, LayerGrid],
    codes: dict[str, Tensor],
    x_adv: Tensor | None = None,
) -> tuple[float, Tensor]:
    """(accuracy, (N,) correct) of the model with every gridded weight replaced by its dequantized codes.

    Codes with a leading example axis (per-example scope) give each input its own quantized model. The check is
    the ordinary module (`functional_call`) on weights that lie exactly on the grid.
    """
    weights = {f"{name}.weight": grids[name].dequantize(c).to(x.dtype) for name, c in codes.items()}
    for name, c in codes.items():
        if not bool(((c >= grids[name].qmin) & (c <= grids[name].qmax) & (c == c.round())).all()):
            raise RuntimeError(f"codes of layer {name} leave the integer grid")  # a bug: round_to_grid clamps
    per_example = any(c.dim() > dict(model.named_modules())[n].weight.dim() for n, c in codes.items())
    was_training = model.training
    model.eval()
    try:
        logits = _logits(model, x if x_adv is None else x_adv, weights, per_example)
    finally:
        model.train(was_training)
    correct = logits.argmax(dim=1) == y
    return float(correct.float().mean()), correct


def save_quantized(
    path: str | Path, grids: dict[str, LayerGrid], codes: dict[str, Tensor], spec: QuantizationSpec
) -> None:
    """The quantized weights as safetensors: `<layer>.weight_q` (int32 codes), `.scale`, `.zero_point`.

    W = (weight_q - zero_point) * scale reproduces the deployed weights; metadata names the scheme.
    """
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    for name, c in codes.items():
        tensors[f"{name}.weight_q"] = c.to(torch.int32).contiguous().cpu()
        tensors[f"{name}.scale"] = grids[name].scale.contiguous().cpu()
        tensors[f"{name}.zero_point"] = grids[name].zero_point.to(torch.int32).contiguous().cpu()
    meta = {"quantization": spec.describe(), "dequantize": "W = (weight_q - zero_point) * scale"}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def nearest_codes(model: nn.Module, grids: dict[str, LayerGrid]) -> dict[str, Tensor]:
    """Round-to-nearest codes of every gridded layer (what a deployment tool's default quantizer stores)."""
    modules = dict(model.named_modules())
    return {name: grid.codes_nearest(modules[name].weight.detach()) for name, grid in grids.items()}


def random_codes(model: nn.Module, grids: dict[str, LayerGrid], generator: torch.Generator) -> dict[str, Tensor]:
    """Stochastic rounding: up with probability equal to the fractional part (unbiased), else down."""
    modules = dict(model.named_modules())
    codes = {}
    for name, grid in grids.items():
        u = modules[name].weight.detach() / grid.scale + grid.zero_point
        up = torch.rand(u.shape, generator=generator, dtype=u.dtype).to(u.device) < (u - torch.floor(u))
        codes[name] = torch.clamp(torch.floor(u) + up.to(u.dtype), grid.qmin, grid.qmax)
    return codes


@dataclass
class QuantizationReport:
    """Accuracy of the model's quantizations on one grid, each measured by the ordinary module.

    Attributes:
        spec: the grid assumed.
        grids: per layer, its scale range, channel count and zero points.
        eps_x: the input radius of the "with input noise" rows (0 rows are always present).
        rows: label -> {eps_x: accuracy}; labels: "float" (no quantization), "nearest", "random rounding" (mean
            over draws), "worst-case rounding (shared)", "worst-case rounding (per-example)" (any rounding, found
            by the attack in the box of radius s), "certified (METHOD, ROUNDING rounding)" (the spec's box).
        worst_codes: the shared worst-case rounding at eps_x = 0 (one deployable model), for export.
    """

    spec: QuantizationSpec
    grids: dict[str, dict[str, Any]]
    eps_x: float
    rows: dict[str, dict[float, float]]
    worst_codes: dict[str, Tensor]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "quantization": self.spec.describe(),
            "bits": self.spec.bits,
            "per_channel": self.spec.per_channel,
            "scheme": self.spec.scheme.value,
            "rounding": self.spec.rounding.value,
            "grids": self.grids,
            "eps_x": self.eps_x,
            "accuracy": {label: {str(k): v for k, v in row.items()} for label, row in self.rows.items()},
            "seconds": self.seconds,
        }


def _input_attack_accuracy(model, x, y, weights_codes, grids, eps_x, attack, domain) -> float:
    """Accuracy of one quantized model (codes without an example axis) under an input-only attack."""
    if eps_x == 0:
        return quantized_accuracy(model, x, y, grids, weights_codes)[0]
    # The attack needs a module holding the grid weights (the caller's model is never modified).
    quantized = copy.deepcopy(model)
    modules = dict(quantized.named_modules())
    with torch.no_grad():
        for name, c in weights_codes.items():
            modules[name].weight.copy_(grids[name].dequantize(c))
    result = attack(quantized, x, y, ThreatModel(eps_x=eps_x, domain=domain))
    check = check_attack(quantized, x, y, result)
    if not check.passed:
        raise RuntimeError(f"input attack on the quantized model failed the check: {check.problems}")
    return quantized_accuracy(model, x, y, grids, weights_codes, x_adv=result.x_adv)[0]


def evaluate_quantization(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    spec: QuantizationSpec,
    attack: Any,
    eps_x: float = 0.0,
    domain: tuple[float, float] = (0.0, 1.0),
    layers: list[str] | None = None,
    random_draws: int = 5,
    certify_method: str | None = "crown",
    seed: int = 0,
    chunk: int = 64,
) -> QuantizationReport:
    """Nearest, random and worst-case rounding accuracy, and certified accuracy, at eps_x 0 and `eps_x`.

    The worst case searches the box of radius s around W (every rounding lies in it) with `attack` in the
    shared scope (one deployed model for all inputs) and the per-example scope, then rounds each weight to the
    neighbouring grid point nearer the attack's weight; accuracies are those of the ordinary module with the
    dequantized grid weights (and the attack's inputs when eps_x > 0). Certified: the bound `certify_method`
    over the box of the spec's rounding (s/2 nearest, s any) joint with eps_x: every quantization of that kind
    keeps those predictions.
    """
    import time

    from ..evaluation import certified_mask

    t0 = time.perf_counter()
    base = ThreatModel(domain=domain, layers=layers)
    any_spec = QuantizationSpec(spec.bits, spec.per_channel, spec.scheme, Rounding.ANY)
    box, grids = quantization_threat(model, any_spec, base)
    modules = dict(model.named_modules())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean = model(x).argmax(dim=1) == y
        radii = sorted({0.0, float(eps_x)})
        rows: dict[str, dict[float, float]] = {label: {} for label in ("float", "nearest", "random rounding")}
        nearest = nearest_codes(model, grids)
        generator = torch.Generator().manual_seed(seed)
        draws = [random_codes(model, grids, generator) for _ in range(random_draws)]
        float_threat = ThreatModel(domain=domain)
        for ex in radii:
            if ex == 0:
                rows["float"][ex] = float(clean.float().mean())
            else:
                result = attack(model, x, y, float_threat.model_copy(update={"eps_x": ex}))
                rows["float"][ex] = check_attack(model, x, y, result).accuracy
            rows["nearest"][ex] = _input_attack_accuracy(model, x, y, nearest, grids, ex, attack, domain)
            rows["random rounding"][ex] = sum(
                _input_attack_accuracy(model, x, y, d, grids, ex, attack, domain) for d in draws
            ) / max(len(draws), 1)
        worst_codes: dict[str, Tensor] = {}
        shared_survived: dict[float, Tensor] = {}
        for scope in (Scope.SHARED, Scope.PER_EXAMPLE):
            label = f"worst-case rounding ({scope.value})"
            rows[label] = {}
            for ex in radii:
                threat = box.model_copy(update={"eps_x": ex, "scope": scope})
                result = attack(model, x, y, threat)
                correct = []
                for s in range(0, len(y), len(y) if scope is Scope.SHARED else chunk):
                    e = len(y) if scope is Scope.SHARED else min(s + chunk, len(y))
                    perturbed = result.perturbed_weights(s, e)
                    codes = {
                        name: round_to_grid(modules[name].weight.detach(), perturbed[f"{name}.weight"], grids[name])
                        for name in grids
                        if f"{name}.weight" in perturbed
                    }
                    correct.append(quantized_accuracy(model, x[s:e], y[s:e], grids, codes, result.x_adv[s:e])[1])
                    if scope is Scope.SHARED and ex == 0:
                        worst_codes = codes
                survived = torch.cat(correct) & clean
                if scope is Scope.PER_EXAMPLE:
                    # The shared rounding is one per-example choice too: each example keeps its worst.
                    survived &= shared_survived[ex]
                else:
                    shared_survived[ex] = survived
                rows[label][ex] = float(survived.float().mean())
        if certify_method is not None:
            certified_label = f"certified ({certify_method}, {spec.rounding.value} rounding)"
            rows[certified_label] = {}
            cert_threat, _ = quantization_threat(model, spec, base)
            for ex in radii:
                threat = cert_threat.model_copy(update={"eps_x": ex})
                mask = certified_mask(model, x, y, threat, certify_method)
                rows[certified_label][ex] = float(mask.float().mean())
    finally:
        model.train(was_training)
    return QuantizationReport(
        spec=spec,
        grids={name: grid.describe() for name, grid in grids.items()},
        eps_x=float(eps_x),
        rows=rows,
        worst_codes=worst_codes,
        seconds=time.perf_counter() - t0,
    )
