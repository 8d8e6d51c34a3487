"""Theorem 2 (THEORY.md section 4): the error-analysis bound on the logit, loss and margin changes.

Along the network two per-example numbers are carried:
  A_l >= ||h'_l||_inf (how large activations can get) and E_l >= ||h'_l - h_l||_inf (how far they can move),
  A_l = (||W_l|| + eta_l) A_{l-1} + ||b_l|| + beta_l,   E_l = ||W_l|| E_{l-1} + eta_l A_{l-1} + beta_l,
with eta_l >= ||D_l||_inf and beta_l the largest bias radius. E_L bounds the logit change and 2 E_L the loss
change. E_L splits into R_x (the input perturbation carried through the Lipschitz constants of the layers) and
R_w (each layer's weight and bias term carried through the layers after it): E_L = R_x + R_w, so
  loss(x, W) + 2 R_x + 2 R_w >= max over the threat set of the loss,
which is the bound-regularised objective of section 6. The bound is sound but loose; it is cheap and
differentiable in the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..models import Normalize
from ..threat import ThreatModel
from .ibp import finish_margins, propagate_boxes
from .layer_threat import LayerThreat, UnsupportedLayerError, clean_logits, layer_threats, sequential_layers
from .margins import BoundMethod, MarginBounds

__all__ = ["NormBounds", "SensitivityTerms", "norm_bounds", "norm_margin_bounds", "sensitivity_terms"]

_WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: 1-Lipschitz in l_inf and never increasing ||.||_inf, with h(0) = 0: A and E pass through unchanged.
_NONEXPANSIVE_TYPES = (
    nn.ReLU,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
)
#: Layers that map a box exactly onto a box; before the first weight layer they act on the input box itself.
_BOX_EXACT_TYPES = (Normalize, nn.Flatten, nn.Identity, nn.Dropout)


class SensitivityTerms(NamedTuple):
    """Per-example sensitivity terms of Theorem 2, E_L = r_x + r_w (or their logs when `log_domain`).

    Attributes:
        r_x: (N,) input term: the input perturbation times the product of the layers' l_inf operator norms.
        r_w: (N,) weight term: sum over layers of (eta_l A_{l-1} + beta_l) times the norms of later layers.
        log_domain: r_x and r_w hold log R_x and log R_w.
    """

    r_x: Tensor
    r_w: Tensor
    log_domain: bool


@dataclass
class NormBounds:
    """Theorem 2 per example.

    Attributes:
        logit_change: (N,) E_L >= ||z' - z||_inf over the threat set.
        loss_change: (N,) 2 E_L >= |l(z', y) - l(z, y)| for the cross-entropy, any label.
        margin_change: (N, K) bound on |m'_k - m_k|, m_k = z_y - z_k (0 at k = y); None without labels.
        r_x, r_w: (N,) the split E_L = r_x + r_w (input and weight sensitivity).
        clean_logits: (N, K) the unperturbed logits.
    """

    logit_change: Tensor
    loss_change: Tensor
    margin_change: Tensor | None
    r_x: Tensor
    r_w: Tensor
    clean_logits: Tensor


class _Algebra:
    """+, x and the embedding of non-negative numbers, ordinary or in the log domain (logaddexp, +, log).

    Known zeros (constants such as eps_x = 0 or an unperturbed layer's eta) are carried as None rather than
    as numbers: in the log domain a floored zero multiplied by many norms would grow into a spurious term,
    and log 0 would give infinite gradients. Values that merely happen to be 0 but carry a gradient (a fresh
    zero bias) are floored at the dtype's smallest normal number, which only enlarges the bound.
    """

    def __init__(self, log: bool) -> None:
        self.log = log

    def lift(self, v: Tensor) -> Tensor | None:
        if not v.requires_grad and bool((v == 0).all()):
            return None
        return torch.log(v.clamp(min=torch.finfo(v.dtype).tiny)) if self.log else v

    def add(self, a: Tensor | None, b: Tensor | None) -> Tensor | None:
        if a is None or b is None:
            return b if a is None else a
        return torch.logaddexp(a, b) if self.log else a + b

    def mul(self, a: Tensor | None, b: Tensor | None) -> Tensor | None:
        if a is None or b is None:
            return None
        return a + b if self.log else a * b

    def value(self, v: Tensor | None, like: Tensor) -> Tensor:
        """v as a tensor shaped like `like` (N,): a known zero becomes 0, or -inf in the log domain."""
        if v is None:
            return torch.full_like(like, float("-inf") if self.log else 0.0)
        return v.expand_as(like) if v.dim() == 0 else v


_PLAIN = _Algebra(log=False)
_LOG = _Algebra(log=True)


def _operator_norm(weight: Tensor) -> Tensor:
    """||W||_inf, the largest row l1 norm; for a kernel, rows are output channels (bounds the conv's norm)."""
    return weight.reshape(weight.shape[0], -1).abs().sum(dim=1).max()


class _State(NamedTuple):
    """Per-example (N,) quantities after a layer, in the algebra's domain (None: exactly zero)."""

    a: Tensor | None  # A_l
    r_x: Tensor | None  # the E_0 part of E_l
    r_w: Tensor | None  # the rest of E_l


def _kind(module: nn.Module) -> type[nn.Module] | None:
    """The known layer type `module` is (a subclass keeping its forward counts), else None."""
    known = (*_WEIGHT_TYPES, *_NONEXPANSIVE_TYPES, Normalize)
    if getattr(module, "divisor_override", None):
        return None  # a pooling sum over fewer than its window size can grow ||h||_inf
    for cls in type(module).__mro__:
        if cls in known:
            return cls if type(module).forward is cls.forward else None
    return None


def _unsupported(name: str, module: nn.Module) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"the norm bound (Theorem 2) has no rule for layer '{name}' ({type(module).__name__}); it covers "
        f"feed-forward ReLU networks of Linear/Conv, ReLU, Flatten, pooling and Normalize layers. A new layer "
        f"needs its l_inf Lipschitz constant and growth bound in nonsingular/bounds/norm.py"
    )


def _layer_constants(
    module: nn.Linear | nn.Conv1d | nn.Conv2d, lt: LayerThreat | None, dtype: torch.dtype
) -> tuple[Tensor, ...]:
    """(||W||, eta, ||b||, beta) of a weight layer, differentiable in its parameters."""
    zero = torch.zeros((), dtype=dtype, device=module.weight.device)
    norm_w = _operator_norm(module.weight.to(dtype))
    norm_b = module.bias.to(dtype).abs().max() if module.bias is not None else zero
    eta = lt.operator_norm() if lt is not None else zero
    beta = lt.beta.max() if lt is not None and lt.beta is not None else zero
    return norm_w, eta, norm_b, beta


def _propagate(
    layers: list[tuple[str, nn.Module]], threats: dict[str, LayerThreat], state: _State, alg: _Algebra
) -> _State:
    """Carry (A, R_x, R_w) through `layers` with Theorem 2's recursion."""
    a, r_x, r_w = state
    dtype = next(t for t in (*state, torch.zeros(())) if t is not None).dtype
    for name, module in layers:
        kind = _kind(module)
        if kind in _WEIGHT_TYPES and isinstance(module, _WEIGHT_TYPES):
            norm_w, eta, norm_b, beta = (alg.lift(v) for v in _layer_constants(module, threats.get(name), dtype))
            r_x = alg.mul(norm_w, r_x)
            r_w = alg.add(alg.mul(norm_w, r_w), alg.add(alg.mul(eta, a), beta))  # + this layer's eta A + beta
            a = alg.add(alg.mul(alg.add(norm_w, eta), a), alg.add(norm_b, beta))
        elif kind is Normalize and isinstance(module, Normalize):
            # (h - mu) / sigma: distances scale by 1 / min |sigma|, sizes become (A + max |mu|) / min |sigma|.
            inv = alg.lift(1 / module.std.to(dtype).abs().min())
            r_x, r_w = alg.mul(inv, r_x), alg.mul(inv, r_w)
            a = alg.mul(inv, alg.add(a, alg.lift(module.mean.to(dtype).abs().max())))
        elif kind is None:
            raise _unsupported(name, module)
    return _State(a, r_x, r_w)


class _Values(NamedTuple):
    """A _State with its known zeros made explicit (N,) tensors."""

    a: Tensor
    r_x: Tensor
    r_w: Tensor


class _Run(NamedTuple):
    """Theorem 2's quantities as (N,) tensors in the algebra's domain (known zeros made explicit)."""

    layers: list[tuple[str, nn.Module]]
    threats: dict[str, LayerThreat]
    before_last: _Values  # after every layer but the last
    final: _Values


def _run(model: nn.Module, x: Tensor, threat: ThreatModel, alg: _Algebra) -> _Run:
    layers = sequential_layers(model)
    for name, module in layers:
        if _kind(module) is None:
            raise _unsupported(name, module)
    if not any(_kind(m) in _WEIGHT_TYPES for _, m in layers):
        raise UnsupportedLayerError("the norm bound needs at least one Linear or Conv layer")
    threats = layer_threats(model, threat, x.dtype)
    # Leading box-exact layers (normalisation, flatten) act on the input box itself: exact A_0 and E_0.
    start = next(i for i, (_, m) in enumerate(layers) if not isinstance(m, _BOX_EXACT_TYPES))
    lb, ub = propagate_boxes(layers[:start], threats, *threat.input_bounds(x))[-1]
    center = propagate_boxes(layers[:start], threats, x, x)[-1][0]
    lb, ub, center = (t.reshape(len(x), -1) for t in (lb, ub, center))
    a0 = torch.maximum(lb.abs(), ub.abs()).amax(dim=1)
    e0 = torch.maximum(center - lb, ub - center).amax(dim=1)
    before = _propagate(layers[start:-1], threats, _State(alg.lift(a0), alg.lift(e0), None), alg)
    final = _propagate(layers[-1:], threats, before, alg)
    explicit = [_Values(*(alg.value(v, e0) for v in state)) for state in (before, final)]
    return _Run(layers, threats, *explicit)


def sensitivity_terms(model: nn.Module, x: Tensor, threat: ThreatModel, log_domain: bool = False) -> SensitivityTerms:
    """The input and weight sensitivity terms of Theorem 2 per example, differentiable in the weights.

    R_x + R_w = E_L bounds the logit change, so l(f(x), y) + 2 R_x + 2 R_w bounds the worst-case joint loss
    (the regulariser of THEORY.md section 6 at lambda_x = lambda_w = 2). Products of norms grow exponentially
    with depth; `log_domain=True` returns log R_x and log R_w computed with log-sum-exp throughout, which stays
    finite where the plain products overflow (zeros are floored at the dtype's smallest normal number, so
    log R_x is about -87 in float32 when eps_x = 0; drop the term rather than regularise it then).

    Args:
        model: nn.Sequential feed-forward ReLU network (Normalize, Flatten, Linear/Conv, ReLU, pooling).
        x: (N, *input_shape) in threat.domain; computed in x's dtype (cast the model's weights, not the model).
        threat: the threat whose radii scale the terms (eps_x, eps_w, ball, mode, layers, eps_b).

    Returns:
        SensitivityTerms with (N,) tensors r_x and r_w.
    """
    alg = _LOG if log_domain else _PLAIN
    final = _run(model, x, threat, alg).final
    return SensitivityTerms(r_x=final.r_x, r_w=final.r_w, log_domain=log_domain)


def norm_bounds(model: nn.Module, x: Tensor, threat: ThreatModel, y: Tensor | None = None) -> NormBounds:
    """Theorem 2 per example: bounds on the logit, loss and (with labels) per-class margin changes.

    Args:
        model: nn.Sequential feed-forward ReLU network.
        x: (N, *input_shape) in threat.domain; computed in x's dtype.
        threat: the joint threat (per-example scope; the shared scope is a subset).
        y: (N,) labels, for the margin changes.
    """
    run = _run(model, x, threat, _PLAIN)
    logit_change = run.final.r_x + run.final.r_w
    logits = clean_logits(model, x)
    margin_change = None
    if y is not None:
        margin_change = (2 * logit_change)[:, None].expand(-1, logits.shape[1])
        last_name, last = run.layers[-1]
        if _kind(last) is nn.Linear and isinstance(last, nn.Linear):
            margin_change = torch.minimum(margin_change, _last_layer_margin_change(last, run, last_name, y))
        margin_change = finish_margins(margin_change, y)
    return NormBounds(
        logit_change=logit_change,
        loss_change=2 * logit_change,
        margin_change=margin_change,
        r_x=run.final.r_x,
        r_w=run.final.r_w,
        clean_logits=logits,
    )


def _last_layer_margin_change(last: nn.Linear, run: _Run, name: str, y: Tensor) -> Tensor:
    """(N, K): ||W_y - W_k||_1 E_{L-1} + (rowsum rho_y + rowsum rho_k) A_{L-1} + beta_y + beta_k."""
    a, e = run.before_last.a, run.before_last.r_x + run.before_last.r_w
    w = last.weight.to(a.dtype)
    change = (w[y][:, None, :] - w[None, :, :]).abs().sum(dim=-1) * e[:, None]
    lt = run.threats.get(name)
    if lt is not None:
        rows = lt.row_sums()
        change = change + (rows[y][:, None] + rows[None, :]) * a[:, None]
        if lt.beta is not None:
            change = change + lt.beta[y][:, None] + lt.beta[None, :]
    return change


def norm_margin_bounds(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> MarginBounds:
    """Margin lower bounds m_k - (Theorem 2's bound on |m'_k - m_k|)."""
    bounds = norm_bounds(model, x, threat, y)
    logits = bounds.clean_logits
    clean_margin = logits.gather(1, y[:, None]) - logits
    if bounds.margin_change is None:  # unreachable: norm_bounds computes it whenever labels are given
        raise RuntimeError("norm_bounds returned no margin change for labelled examples")
    lower = finish_margins(clean_margin - bounds.margin_change, y)
    return MarginBounds(lower=lower, y=y, clean_logits=logits, method=BoundMethod.NORM)
