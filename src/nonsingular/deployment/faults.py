"""Random faults: how much worse is the adversary than nature?

Two kinds of random weight faults, each drawn N times as one shared fault for every input (a faulty device):
- uniform noise in the threat's box: every perturbed weight (and bias, with eps_b) moves uniformly within its
  element-wise radius, the input uniformly within its eps_x box;
- bit flips of int8 weights: the weights on the model's symmetric per-tensor int8 grid (two's complement codes)
  with each chosen bit of each weight flipped independently with probability `rate`.
Accuracies are the ordinary module's (`torch.func.functional_call` on the faulty weights). The report gives the
mean over draws with a 95% confidence interval of that mean (normal approximation, +-1.96 sd / sqrt(N)) and the
2.5% / 97.5% quantiles of the draws; the worst case beside it is what the attack found in the same box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import require_finite
from ..threat import ThreatModel, WeightBall
from .quantize import QuantizationSpec, layer_grids, nearest_codes

__all__ = ["FaultSummary", "bit_flip_accuracies", "flip_bit", "summarise", "uniform_box_accuracies"]


@dataclass
class FaultSummary:
    """Accuracy over N random draws: mean, the 95% interval of the mean, and the spread of the draws."""

    draws: int
    mean: float
    mean_low: float
    mean_high: float
    q025: float
    q975: float

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def summarise(accuracies: list[float]) -> FaultSummary:
    """Mean, 95% interval of the mean (1.96 standard errors) and 2.5% / 97.5% quantiles, each checked finite."""
    values = torch.tensor(accuracies, dtype=torch.float64)
    n = len(accuracies)
    mean = float(values.mean())
    half = 1.96 * float(values.std()) / math.sqrt(n) if n > 1 else 0.0
    q = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return FaultSummary(
        draws=n,
        mean=require_finite(mean, "mean fault accuracy"),
        mean_low=max(0.0, mean - half),
        mean_high=min(1.0, mean + half),
        q025=require_finite(q[0], "fault accuracy quantile"),
        q975=require_finite(q[1], "fault accuracy quantile"),
    )


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, replaced: dict[str, Tensor]) -> float:
    params = {**dict(model.named_parameters()), **replaced}
    with torch.no_grad():
        logits = functional_call(model, (params, dict(model.named_buffers())), (x,))
    return float((logits.argmax(dim=1) == y).float().mean())


def uniform_box_accuracies(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, draws: int, seed: int = 0
) -> list[float]:
    """Accuracy under `draws` uniform draws from the threat's element-wise box (one weight draw for all inputs).

    Raises:
        ValueError: an operator-ball threat (its uniform distribution is not what a fault model means here).
    """
    if threat.weight_ball is not WeightBall.ELEMENTWISE:
        raise ValueError("random faults are drawn from element-wise boxes; use --weight-ball elementwise")
    generator = torch.Generator().manual_seed(seed)
    lb, ub = threat.input_bounds(x)
    layers = threat.weight_layers(model)
    radii = {name: threat.layer_radii(name, module.weight, module.bias) for name, module in layers}
    was_training = model.training
    model.eval()
    out = []
    try:
        for _ in range(draws):
            replaced: dict[str, Tensor] = {}
            for name, module in layers:
                w = module.weight.detach()
                u = torch.rand(w.shape, generator=generator, dtype=w.dtype).to(w.device)
                replaced[f"{name}.weight"] = w + (2 * u - 1) * radii[name].rho
                beta = radii[name].beta
                if beta is not None and module.bias is not None:
                    b = module.bias.detach()
                    ub_ = torch.rand(b.shape, generator=generator, dtype=b.dtype).to(b.device)
                    replaced[f"{name}.bias"] = b + (2 * ub_ - 1) * beta
            ux = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            out.append(_accuracy(model, lb + ux * (ub - lb), y, replaced))
    finally:
        model.train(was_training)
    return out


def flip_bit(codes: Tensor, bit: int, where: Tensor) -> Tensor:
    """int8 codes (as int64 in [-128, 127]) with `bit` of their two's complement byte flipped where `where`."""
    byte = codes & 0xFF
    byte = torch.where(where, byte ^ (1 << bit), byte)
    return torch.where(byte >= 128, byte - 256, byte)


def bit_flip_accuracies(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    rate: float,
    bits: tuple[int, ...] = (7,),
    draws: int = 100,
    layers: list[str] | None = None,
    seed: int = 0,
) -> list[float]:
    """Accuracy of the int8 (symmetric, per-tensor, round-to-nearest) model with random bit flips.

    Each weight's 8-bit two's complement code has each bit in `bits` (7: the sign bit, 6: the highest
    magnitude bit, ...) flipped independently with probability `rate`; codes are dequantized with the tensor's
    scale (a flip can leave [-127, 127]: -128 is kept, as the hardware would).
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"the bit-flip rate must lie in [0, 1], got {rate}")
    if not bits or any(not 0 <= b <= 7 for b in bits):
        raise ValueError(f"bits to flip must be in 0..7 (7: the sign bit), got {list(bits)}")
    grids = layer_grids(model, QuantizationSpec(bits=8), layers)
    codes = {name: c.to(torch.int64) for name, c in nearest_codes(model, grids).items()}
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    try:
        for _ in range(draws):
            replaced = {}
            for name, code in codes.items():
                for bit in bits:
                    code = flip_bit(code, bit, torch.rand(code.shape, generator=generator).to(code.device) < rate)
                replaced[f"{name}.weight"] = grids[name].dequantize(code.to(grids[name].scale.dtype))
            out.append(_accuracy(model, x, y, replaced))
    finally:
        model.train(was_training)
    return out
