"""Falsification: search for a point of the unsafe region, and check any candidate by running the model itself.

The objective of a point is the property's value v(x) = min over disjuncts g of max over rows i in g of
(C_i f(x) - d_i): v(x) <= 0 exactly when f(x) lies in some disjunct's unsafe set. PGD minimises it with signed
gradient steps inside the box, from random starts or from given ones (the relaxation's minimisers of the worst
domains). Under a weight threat it also moves the Lemma 1 coordinates t_l in [-1, 1] (THEORY.md section 3), which
are exactly the per-example weight ball of a Linear chain.

A candidate is only a counterexample once `check_witness` has run the user's model (its own forward, through
torch.func.functional_call with the explicit perturbed weights) in float32 and in float64 and found the
property violated in both, with x inside the box and the weights inside the ball as each dtype compares them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .chain import Chain, ChainLayer

__all__ = ["Witness", "check_witness", "explicit_weights", "pgd_falsify", "property_value"]


@dataclass(frozen=True)
class Witness:
    """A checked counterexample.

    Attributes:
        x: (*input_shape) float64, inside the box.
        weights: module name -> perturbed weight and bias (float64) for a weight threat; empty for input-only.
        value: the property's value v(x) on the float64 run (<= 0).
        value_float32: the same on the float32 run (<= 0).
    """

    x: Tensor
    weights: dict[str, Tensor]
    value: float
    value_float32: float


def property_value(logits: Tensor, spec: Tensor, offset: Tensor, groups: Tensor) -> Tensor:
    """(N,) v = min_g max_{i in g} (spec_i logits - offset_i); groups: (G, R) bool membership."""
    rows = logits @ spec.to(logits.dtype).T - offset.to(logits.dtype)  # (N, R)
    masked = torch.where(groups[None], rows[:, None, :], torch.full_like(rows[:, None, :], -torch.inf))
    return masked.amax(dim=-1).amin(dim=-1)


def pgd_falsify(
    chain: Chain,
    lo: Tensor,
    hi: Tensor,
    spec: Tensor,
    offset: Tensor,
    groups: Tensor,
    starts: Tensor,
    *,
    steps: int,
    generator: torch.Generator,
    deadline: float,
) -> tuple[Tensor, list[Tensor] | None, Tensor]:
    """Minimise v over the box [lo, hi] (flattened inputs, (n,)) from `starts` (S, n).

    Returns:
        (x (S, n), t per layer (S, n_l) or None, v (S,)): the best point of each start.
    """
    x = starts.to(torch.float64).clone().clamp_(lo, hi)
    joint = chain.perturbs_weights
    t = (
        [
            torch.rand(x.shape[0], layer.weight.shape[0], generator=generator, dtype=torch.float64) * 2 - 1
            for layer in chain.layers
        ]
        if joint
        else None
    )
    width = hi - lo
    best_x, best_t = x.clone(), None if t is None else [ti.clone() for ti in t]
    shape = (x.shape[0], *chain.input_shape)
    best_v = torch.full((x.shape[0],), torch.inf, dtype=torch.float64)
    for step in range(steps + 1):
        x.requires_grad_(True)
        if t is not None:
            for ti in t:
                ti.requires_grad_(True)
        v = property_value(chain.forward(chain.h0(x.reshape(shape)), t), spec, offset, groups)
        with torch.no_grad():
            better = v < best_v
            best_v = torch.where(better, v.detach(), best_v)
            best_x[better] = x.detach()[better]
            if t is not None and best_t is not None:
                for kept, cur in zip(best_t, t, strict=True):
                    kept[better] = cur.detach()[better]
        if step == steps or bool((best_v < 0).all()) or time.monotonic() > deadline:
            break
        params = [x, *(t or [])]
        grads = torch.autograd.grad(v.sum(), params)
        size = 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / max(steps, 1)))).item() * 0.25 + 0.01
        with torch.no_grad():
            x = (x - size * width * grads[0].sign()).clamp(lo, hi)
            if t is not None:
                t = [(ti - 2 * size * g.sign()).clamp(-1, 1) for ti, g in zip(t, grads[1:], strict=True)]
    return best_x, best_t, best_v


def explicit_weights(chain: Chain, h0: Tensor, t: list[Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """The weights W_l + D_l, b_l + db_l that realise the Lemma 1 coordinates t for one input (h0: (1, n_0)),
    in float64: D_l = diag(t_l) (rho_l * sign(h_{l-1})^T), sign(0) := +1 (operator ball: the whole row's budget on
    the largest |h_j|), db_l = t_l * beta_l. Layers the threat leaves alone are not in the result."""
    out: dict[str, tuple[Tensor, Tensor]] = {}
    h = h0.to(torch.float64)
    for i, layer in enumerate(chain.layers):
        lt = layer.threat
        w, b = layer.weight, layer.bias
        ti = t[i][0].to(torch.float64)
        if lt is not None:
            sign = torch.where(h[0] >= 0, 1.0, -1.0).to(torch.float64)
            if lt.rho is not None:
                delta = ti[:, None] * lt.rho * sign[None, :]
            else:
                delta = torch.zeros_like(w)
                j = int(h[0].abs().argmax())
                delta[:, j] = ti * lt.operator_radius() * sign[j]
            db = ti * lt.beta if lt.beta is not None else torch.zeros_like(b)
            w, b = w + delta, b + db
            out[layer.name] = (w, b)
        z = F.linear(h, w, b)
        h = torch.relu(z) if i < len(chain.layers) - 1 else z
    return out


def _run(model: nn.Module, x: Tensor, params: dict[str, Tensor], dtype: torch.dtype) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        named = [*model.named_parameters(), *model.named_buffers()]
        device = named[0][1].device if named else x.device  # the search works on the CPU; the model may not
        state = {k: params.get(k, v).to(device, dtype) if v.is_floating_point() else v for k, v in named}
        with torch.no_grad():
            out: Tensor = torch.func.functional_call(model, state, (x.to(device, dtype),))
        return out.cpu()
    finally:
        model.train(was_training)


def _toward(value: Tensor, target: Tensor, bad: Tensor) -> Tensor:
    """value with the entries flagged `bad` moved one step (in value's dtype) toward target."""
    return torch.where(bad, torch.nextafter(value, target), value)


def _fit_weights(layer: ChainLayer, w_new: Tensor, b_new: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
    """The perturbed weight and bias rounded to `dtype`, pulled back toward the clean ones by single ulps until
    the ball holds them as `dtype` compares (THEORY.md section 8); None if that fails."""
    lt = layer.threat
    if lt is None:
        return None
    w0, b0 = layer.weight.to(dtype), layer.bias.to(dtype)
    w, b = w_new.to(dtype), b_new.to(dtype)
    beta = (lt.beta if lt.beta is not None else torch.zeros_like(layer.bias)).to(dtype)
    for _ in range(8):
        dw, db = w - w0, b - b0
        if lt.rho is not None:
            bad_w = dw.abs() > lt.rho.to(dtype)
        else:
            rows = dw.abs().to(torch.float64).sum(dim=1) > lt.operator_radius()
            bad_w = rows[:, None] & (dw != 0)
        bad_b = db.abs() > beta
        if not (bool(bad_w.any()) or bool(bad_b.any())):
            return w, b
        w, b = _toward(w, w0, bad_w), _toward(b, b0, bad_b)
    return None


def _fit_box(x: Tensor, lower: Tensor, upper: Tensor, dtype: torch.dtype) -> Tensor | None:
    """x rounded to `dtype` and moved by single ulps into [lower, upper] (compared in float64); None if it fails."""
    v = x.to(dtype)
    for _ in range(8):
        low, high = v.to(torch.float64) < lower, v.to(torch.float64) > upper
        if not (bool(low.any()) or bool(high.any())):
            return v
        v = _toward(_toward(v, upper.to(dtype), low), lower.to(dtype), high)
    return None


def check_witness(
    model: nn.Module,
    chain: Chain,
    x: Tensor,
    t: list[Tensor] | None,
    lower: Tensor,
    upper: Tensor,
    spec: Tensor,
    offset: Tensor,
    groups: Tensor,
) -> Witness | None:
    """The counterexample (x, and the weights t stands for) if running `model` confirms it, else None.

    x: (*input_shape). Confirmed means: on a float64 run and on a float32 run of the model's own forward, with x
    and the perturbed weights rounded to that dtype (and pulled back by single ulps where rounding stepped out),
    x lies in [lower, upper] (float32: where the box holds a float32 point), every perturbed weight and bias
    lies in the ball as that dtype compares, and v <= 0.
    """
    x64 = x.to(torch.float64).reshape(lower.shape)
    named: dict[str, tuple[Tensor, Tensor]] = {}
    if t is not None:
        modules = dict(model.named_modules())
        named = explicit_weights(chain, chain.h0(x64[None].clamp(lower, upper)), [ti[None] for ti in t])
        for name, (_, b) in named.items():
            if modules[name].bias is None and bool((b != 0).any()):
                return None
    layers = {layer.name: layer for layer in chain.layers}
    values = []
    weights: dict[str, Tensor] = {}
    x_out = x64
    for dtype in (torch.float64, torch.float32):
        if not bool(((x64 >= lower) & (x64 <= upper)).all()):
            return None
        # The nearest point of the dtype inside the box; a box with no float32 point in some dimension (a
        # zero-width one at a float64 value) is run at the rounding of x, the closest the dtype can get.
        xd = _fit_box(x64, lower, upper, dtype)
        if xd is None:
            xd = x64.to(dtype)
        params: dict[str, Tensor] = {}
        for name, (w, b) in named.items():
            fitted = _fit_weights(layers[name], w, b, dtype)
            if fitted is None:
                return None
            params[f"{name}.weight"] = fitted[0]
            if dict(model.named_modules())[name].bias is not None:
                params[f"{name}.bias"] = fitted[1]
        if dtype is torch.float64:
            weights, x_out = dict(params), xd
        logits = _run(model, xd[None], params, dtype)
        values.append(float(property_value(logits.to(torch.float64), spec, offset, groups)[0]))
    if values[0] > 0 or values[1] > 0:
        return None
    return Witness(x=x_out.clone(), weights=weights, value=values[0], value_float32=values[1])
