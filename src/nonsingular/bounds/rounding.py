"""How far the model as executed (float32, TF32, bf16...) can be from the exact-arithmetic model the bounds
describe: a rigorous a-priori forward error bound over the input box and the weight threat (THEORY.md section 13).

Why a separate bound instead of outward-rounded intervals: the bounds are computed in float64 by linear
relaxations (CROWN) whose coefficients would all need directed rounding to be rigorous about the *float32*
network, and no PyTorch kernel offers directed rounding. The error of the executed network, on the other hand,
has a classical bound that needs only the boxes the engine already has:

- A dot product of n terms in floating point with unit roundoff u satisfies, in ANY summation order,
  |fl(sum_i w_i h_i) - sum_i w_i h_i| <= gamma_n sum_i |w_i| |h_i|, gamma_n = n u / (1 - n u) (Higham, Accuracy
  and Stability of Numerical Algorithms, 2nd ed., section 3.1). Blocked or split-K GEMMs, multithreaded
  reductions and fused multiply-adds are summation orders (or fewer roundings), so the bound covers them; adding
  the bias is one more term (gamma_{n+1}).
- Reduced-precision matmuls (TF32 on CUDA, or float32 matmul precision "high"/"medium") round both operands to
  the short format (unit roundoff s) and accumulate in float32, as tensor cores do: the rounded operands are
  within s of the originals, so |fl(w.h) - w.h| <= ((1 + s)^2 (1 + gamma_{n+1}) - 1) |w|.|h|, about
  2 s + (n + 1) u: the short format costs a constant, not a factor n. (A kernel that accumulated in the short
  format would break this assumption; PyTorch's TF32 and bf16-reduced float32 matmuls do not.)
- If the executed layer input differs from the exact one by at most e_in (element-wise) and the exact input lies
  in the box [lb, ub], then |h_exec| <= max(|lb|, |ub|) + e_in =: A, and
  |fl(W'h_exec + b') - (W'h + b')| <= |W'| e_in + gamma_{n+1} (|W'| A + |b'|),
  with |W'| <= |W| + rho (element-wise threat) or |W'| v <= |W| v + e max(v) (operator threat), |b'| <= |b| + beta.
- ReLU and max-pooling are 1-Lipschitz in the l_inf sense and rounded exactly: the error passes through
  (max-pooling takes the largest error of its window). Reshapes and concatenation move errors with the values.
- Sums of two tensors: one rounding, and one more where an operand is a Python number rounded to the model's
  dtype: e = e_a + e_b + gamma_2 (A_a + A_b). Scaling by a constant k: the executed op may
  round k to the model's dtype, take its reciprocal and multiply (three roundings): e = |k| e_in + gamma_3 |k| A.
- Average pooling over windows of at most m entries: e = pool(e_in) + gamma_{m+2} pool(A).
- Element-wise affine maps with statistics (BatchNorm in eval mode, Normalize): y = s x + t with s = w / sqrt(v +
  eps), t = b - mean s, evaluated by any of PyTorch's formulas ((x - mean) * invstd * w + b, or a precomputed
  scale and shift) in at most ten roundings of at most u each, including sqrt/rsqrt within 2 ulp:
  e = |s| e_in + gamma_10 (|s| A + |mean s| + |b|).
The margin z_y - z_k of the executed model is then within e_L[y] + e_L[k] of the exact one, so a certificate for
the executed model needs its exact lower bound to exceed that (`margin_error_bound`). The argmax of the executed
logits is exact, so a strictly positive executed margin is a correct prediction.

What the bound does not cover (docs/reliability.md): FFT and Winograd convolution algorithms (cuDNN may choose
them; their error is not a dot product's), and the float64 rounding of the bound computation itself (relative
2^-53, about 2^29 times smaller than the float32 term added here; every computed error is inflated by 2^-20 of
itself to absorb the float64 rounding of this module's own arithmetic).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..threat import ThreatModel
from .graph import Graph, trace
from .layer_threat import LayerThreat, UnsupportedLayerError, apply_weight, layer_threats, receptive_max
from .ops_affine import ChannelAffineRule, _AffineRule
from .ops_nonlinear import MaxPoolRule, ReLURule
from .ops_structure import AddRule, CatRule, IdentityRule, PoolRule, ReshapeRule, ScaleRule
from .registry import Box, Input, Node, call

__all__ = [
    "UNIT_ROUNDOFF",
    "Execution",
    "execution_of",
    "forward_error_bound",
    "gamma",
    "graph_forward_error",
    "margin_error_bound",
]

log = logging.getLogger(__name__)

#: Unit roundoff u (half the machine epsilon) of the formats a network may execute in.
UNIT_ROUNDOFF: dict[torch.dtype, float] = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}
#: TF32 keeps 10 explicit mantissa bits: u = 2^-11 (check.TF32_EPS, 2^-10, is its machine epsilon).
TF32_UNIT_ROUNDOFF = 2.0**-11
#: Relative slack on every computed error, absorbing the float64 rounding of this module's own arithmetic.
_SLACK = 1.0 + 2.0**-20
#: Roundings of an element-wise affine map with statistics (BatchNorm, Normalize): see the module docstring.
_AFFINE_ROUNDINGS = 10


def gamma(k: float, u: float) -> float:
    """gamma_k = k u / (1 - k u): the relative error of k roundings; infinite when k u >= 1 (no bound)."""
    if k * u >= 1:
        return math.inf
    return k * u / (1 - k * u)


@dataclass(frozen=True)
class Execution:
    """How a model's arithmetic is executed: the unit roundoff of its element-wise ops, of its matrix products
    (Linear) and of its convolutions, which differ where TF32 or bf16 matmuls are allowed.

    Attributes:
        dtype: the parameters' dtype, in which the network runs.
        u: unit roundoff of element-wise ops (the dtype's).
        u_matmul: unit roundoff of Linear layers' products.
        u_conv: unit roundoff of convolutions.
        reduced: the products round their operands to a shorter format first (then accumulate in `dtype`).
    """

    dtype: torch.dtype
    u: float
    u_matmul: float
    u_conv: float
    reduced: bool

    def describe(self) -> str:
        """e.g. 'float32 (u = 2^-24)' or 'float32 with TF32 products (u = 2^-11)'."""
        worst = max(self.u_matmul, self.u_conv)
        text = f"{str(self.dtype).removeprefix('torch.')}"
        if worst > self.u:
            text += " with reduced-precision products"
        return f"{text} (u = 2^{round(math.log2(worst))})"


def execution_of(model: nn.Module, dtype: torch.dtype | None = None, device: torch.device | None = None) -> Execution:
    """The arithmetic `model` runs in: its floating parameters' dtype and device (or the given ones), with TF32
    products on CUDA when torch allows them, and the float32 matmul precision setting on any device.

    Raises:
        ValueError: a dtype with no known unit roundoff.
    """
    param = next((p for p in (*model.parameters(), *model.buffers()) if p.is_floating_point()), None)
    dtype = dtype or (param.dtype if param is not None else torch.get_default_dtype())
    device = device or (param.device if param is not None else torch.device("cpu"))
    if dtype not in UNIT_ROUNDOFF:
        raise ValueError(f"no unit roundoff known for dtype {dtype}; the forward error bound needs one")
    u = UNIT_ROUNDOFF[dtype]
    u_matmul = u_conv = u
    if dtype == torch.float32:
        precision = torch.get_float32_matmul_precision()
        # "medium" lets matmuls use bf16 internally, "high" TF32 (on CUDA and, in recent torch, on CPU too).
        short = {"medium": UNIT_ROUNDOFF[torch.bfloat16], "high": TF32_UNIT_ROUNDOFF}.get(precision, u)
        u_matmul = u_conv = short
        if device.type == "cuda":
            if torch.backends.cuda.matmul.allow_tf32:
                u_matmul = max(u_matmul, TF32_UNIT_ROUNDOFF)
            if torch.backends.cudnn.allow_tf32:  # on by default: cuDNN convolutions run in TF32
                u_conv = max(u_conv, TF32_UNIT_ROUNDOFF)
    return Execution(dtype=dtype, u=u, u_matmul=u_matmul, u_conv=u_conv, reduced=max(u_matmul, u_conv) > u)


def _magnitude(box: Box, err: Tensor) -> Tensor:
    """A bound on |executed value|: the exact value lies in the box, the executed one within err of it."""
    return torch.maximum(box[0].abs(), box[1].abs()) + err


def _abs_weight_apply(module: nn.Linear | nn.Conv1d | nn.Conv2d, v: Tensor, lt: LayerThreat | None) -> Tensor:
    """|W'| v for v >= 0 and every W' the threat allows (no bias)."""
    w = module.weight.detach().to(v.dtype)
    out = apply_weight(module, v, w.abs())
    if lt is not None:
        if lt.rho is not None:
            out = out + apply_weight(module, v, lt.rho.detach().to(v.dtype))
        else:
            out = out + lt.operator_radius().detach().to(v.dtype) * receptive_max(module, v)
    return out


def _weight_layer(node: Node, box: Box, err: Tensor, lt: LayerThreat | None, ex: Execution) -> Tensor:
    module = node.module
    if not isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
        raise UnsupportedLayerError(f"no rounding rule for weight layer '{node.name}' ({node.kind})")
    linear = isinstance(module, nn.Linear)
    n = math.prod(module.weight.shape[1:])  # terms of one dot product (in features, or in/groups x kernel)
    short = ex.u_matmul if linear else ex.u_conv
    k = n + (1 if module.bias is not None else 0)
    rel = gamma(k, ex.u)  # n products and sums, and the bias, in the model's dtype (any order)
    if short > ex.u:
        # Operands rounded to the short format (|w' - w| <= short |w|, likewise h), then the same accumulation:
        # |fl - w.h| <= ((1 + short)^2 (1 + gamma_k) - 1) |w|.|h|.
        rel = (1 + short) ** 2 * (1 + rel) - 1
    mag = _abs_weight_apply(module, _magnitude(box, err), lt)
    if module.bias is not None:
        shape = (-1,) if linear else (-1, *([1] * (mag.dim() - 2)))
        b = module.bias.detach().to(mag.dtype).abs()
        if lt is not None and lt.beta is not None:
            b = b + lt.beta.detach().to(mag.dtype)
        mag = mag + b.reshape(shape)
    return _abs_weight_apply(module, err, lt) + rel * mag


def _channel_affine(node: Node, rule: ChannelAffineRule, box: Box, err: Tensor, ex: Execution) -> Tensor:
    scale, _ = rule.scale_shift(node.module, err.dtype)
    module = node.module
    # BatchNorm: y = (x - running_mean) s + bias; Normalize: y = (x - mean) / std (scale_shift refused the rest)
    found = getattr(module, "running_mean", None)
    mean: Tensor = found if found is not None else getattr(module, "mean")  # noqa: B009  (module: nn.Module)
    bias: Tensor | None = getattr(module, "bias", None)
    dims = err.dim()

    def shaped(t: Tensor) -> Tensor:
        t = t.detach().to(err.dtype)
        return t.reshape(()) if t.numel() == 1 else t.reshape(1, -1, *([1] * (dims - 2)))

    s = shaped(scale).abs()
    mag = s * _magnitude(box, err) + (shaped(mean) * shaped(scale)).abs()
    if bias is not None:
        mag = mag + shaped(bias).abs()
    return s * err + gamma(_AFFINE_ROUNDINGS, ex.u) * mag


def _operand(node: Node, v: object, boxes: list[Box], errs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(error, magnitude bound) of one operand: a tensor input or a constant (exact in the model's dtype, but a
    Python number may be rounded to it: one more rounding, counted by the caller)."""
    if isinstance(v, Input):
        return errs[v.index], _magnitude(boxes[v.index], errs[v.index])
    const = torch.as_tensor(v, dtype=errs[0].dtype, device=errs[0].device).abs()
    return torch.zeros((), dtype=const.dtype, device=const.device), const


def _pool_window(node: Node, box: Box) -> int:
    """The most entries one output of an average pool sums (its kernel; for adaptive pools, the whole map)."""
    module = node.module
    if isinstance(module, nn.AvgPool1d | nn.AvgPool2d):
        kernel = module.kernel_size
        return math.prod(kernel) if isinstance(kernel, tuple) else int(kernel) ** (box[0].dim() - 2)
    return math.prod(box[0].shape[2:])


def _node_error(
    node: Node, boxes: list[Box], errs: list[Tensor], lt: LayerThreat | None, ex: Execution
) -> Tensor | None:
    """The error bound of one node's executed output, from its inputs' boxes (exact values) and errors; None for
    an op without a rounding rule (e.g. one registered with register_ibp_rule)."""
    rule = node.rule
    if isinstance(rule, _AffineRule):
        return _weight_layer(node, boxes[0], errs[0], lt, ex)
    if isinstance(rule, ChannelAffineRule):
        return _channel_affine(node, rule, boxes[0], errs[0], ex)
    # 1-Lipschitz and exactly rounded (ReLU, identity), or moving values (reshape, cat): the errors move along.
    if isinstance(rule, ReLURule | IdentityRule):
        return errs[0]
    if isinstance(rule, ReshapeRule):  # by the node's shape: chunks of examples change the batch size
        return errs[0].reshape(errs[0].shape[0], *node.shape)
    if isinstance(rule, CatRule):
        return torch.cat([errs[v.index] for v in node.args[0]], rule.dim(node))
    if isinstance(rule, MaxPoolRule):  # |max(a') - max(a)| <= the largest error in the window
        return call(node, [errs[0]])
    if isinstance(rule, AddRule):
        (ea, ma), (eb, mb) = (_operand(node, v, boxes, errs) for v in node.args[:2])
        # the sum's rounding, and the rounding of a Python number to the model's dtype
        return (ea + eb + gamma(2, ex.u) * (ma + mb)).expand(errs[0].shape[0], *node.shape)
    if isinstance(rule, ScaleRule):
        index, k = rule.factor(node)
        kk = torch.as_tensor(k, dtype=errs[index].dtype, device=errs[index].device).abs()
        return kk * errs[index] + gamma(3, ex.u) * kk * _magnitude(boxes[index], errs[index])
    if isinstance(rule, PoolRule):
        m = _pool_window(node, boxes[0])
        return call(node, [errs[0]]) + gamma(m + 2, ex.u) * call(node, [_magnitude(boxes[0], errs[0])])
    return None


def graph_forward_error(
    graph: Graph, threats: dict[str, LayerThreat], boxes: dict[str, Box], execution: Execution
) -> Tensor:
    """(N, *output shape) bound on |executed output - exact output| over the boxes' input set and the threat;
    infinite downstream of an op without a rounding rule (logged), which no certificate may then rely on.

    Args:
        graph: the traced model.
        threats: the threat at each perturbed weight layer, by module name.
        boxes: a sound box of every node's exact value (GraphBounds.boxes; IBP or CROWN-tightened), by name;
            the output node's may be missing (it is never read).
        execution: the arithmetic the model is executed in (`execution_of`).
    """
    lb = boxes[graph.input][0]
    errs: dict[str, Tensor] = {graph.input: torch.zeros_like(lb)}  # the executed input is the exact input
    with torch.no_grad():
        for node in graph.nodes:
            if node.name == graph.input:
                continue
            lt = threats.get(node.name) if node.module is not None else None
            err = _node_error(node, [boxes[i] for i in node.inputs], [errs[i] for i in node.inputs], lt, execution)
            if err is None:
                # Unknown rounding: no bound, so nothing downstream can be certified for the executed model.
                log.warning(
                    "no rounding rule for op '%s' (%s): its floating-point error is unknown, so no certificate is "
                    "given for the executed model; add a rule in src/nonsingular/bounds/rounding.py",
                    node.name,
                    node.kind,
                )
                err = torch.full((lb.shape[0], *node.shape), math.inf, dtype=lb.dtype, device=lb.device)
            errs[node.name] = err
    out = errs[graph.output] * _SLACK
    return torch.where(out.isnan(), torch.full_like(out, math.inf), out)


def margin_error_bound(error: Tensor, y: Tensor) -> Tensor:
    """(N, K) bound on |executed margin - exact margin| for the margins z_y - z_k from a (N, K) per-logit error:
    e[y] + e[k], and 0 at k = y (a class's margin to itself is exactly 0).

    For any linear function c . z of the logits (a VNNLIB objective), the bound is |c| . error.
    """
    out = error.gather(1, y[:, None]) + error
    return out.masked_fill(torch.nn.functional.one_hot(y, error.shape[1]).bool(), 0.0)


def forward_error_bound(
    model: nn.Module,
    lower: Tensor,
    upper: Tensor,
    threat: ThreatModel | None = None,
    *,
    dtype: torch.dtype | None = None,
    boxes: Callable[[Graph, dict[str, LayerThreat], Tensor, Tensor], dict[str, Box]] | None = None,
) -> Tensor:
    """(N, K) bound on |f_exec(x', W') - f(x', W')| for every output k, every x' in [lower, upper] and every W' in
    the threat's weight set, where f_exec is the model evaluated in floating point (any summation order).

    A property "c . f(x) > d on the box", proved in exact arithmetic with lower bound L > d, holds for the
    executed model when L - |c| . error > d. The boxes of intermediate values come from interval propagation in
    float64 (or the `boxes` callable, e.g. CROWN's tightened boxes; any sound boxes give a sound bound).

    Args:
        model: a traceable model whose ops have bound and rounding rules.
        lower: (N, *input_shape) the input box's lower end.
        upper: (N, *input_shape) its upper end.
        threat: the weight threat (its input radius is ignored: the box is given); None for the model as is.
        dtype: the execution dtype (default: the model's parameters'; TF32 and matmul precision as `execution_of`).
        boxes: boxes(graph, threats, lower, upper) -> every node's box (default: IBP in float64).

    Outputs downstream of an op without a rounding rule get an infinite bound (and a logged warning).

    Raises:
        UnsupportedLayerError: an op without a bound rule (the message names it).
        ValueError: mismatched box shapes, or a dtype with no known unit roundoff.
    """
    from .engine import GraphBounds  # the engine imports nothing from here; kept local to keep this module light

    if lower.shape != upper.shape:
        raise ValueError(f"lower {tuple(lower.shape)} and upper {tuple(upper.shape)} differ in shape")
    execution = execution_of(model, dtype=dtype)
    lo, hi = lower.to(torch.float64), upper.to(torch.float64)
    graph, _ = trace(model, lo)
    threats = layer_threats(model, threat, torch.float64) if threat is not None else {}
    found = GraphBounds(graph, threats, lo, hi).boxes if boxes is None else boxes(graph, threats, lo, hi)
    return graph_forward_error(graph, threats, found, execution)
