"""Margin lower bounds of a traced model by method: IBP, CROWN, or alpha-CROWN (CROWN, then optimised ReLU
slopes), chunked over examples within a memory budget. The driver over engine.py's `GraphBounds` and alpha.py.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..threat import ThreatModel
from .alpha import optimise_margins
from .engine import GraphBounds
from .graph import Graph
from .layer_threat import UnsupportedLayerError, layer_threats
from .margins import BoundMethod, MarginBounds, margin_spec
from .plan_cache import traced
from .registry import DEFAULT_MEMORY_MB
from .rounding import execution_of, graph_forward_error, margin_error_bound

__all__ = ["graph_margin_bounds"]


def _check_logits(graph: Graph) -> None:
    out = graph.by_name[graph.output]
    if len(out.shape) != 1:
        raise UnsupportedLayerError(
            f"bounds need (N, classes) logits; the model's output '{out.name}' has shape (N, *{out.shape})"
        )


def _alpha_examples(graph: Graph, n: int, itemsize: int, memory_mb: float) -> int:
    """Examples per alpha-CROWN chunk: as many as a whole dense tightening pass ((2 x node size) rows of the
    widest node, three tensors) allows within the budget, at least one."""
    widest = max(math.prod(node.shape) for node in graph.nodes)
    per_example = 3 * 2 * widest * widest * itemsize
    return max(1, min(n, int(memory_mb * 2**20) // per_example))


def _final_pass_examples(graph: Graph, n: int, rows: int, itemsize: int, memory_mb: float) -> int:
    """Examples per chunk when alpha-CROWN optimises only the final pass: autograd keeps that pass's coefficients
    for every node (spec rows x node size, about four tensors each), so as many examples as fit the budget."""
    per_example = 4 * rows * sum(math.prod(node.shape) for node in graph.nodes) * itemsize
    return max(1, min(n, int(memory_mb * 2**20) // per_example))


def graph_margin_bounds(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    method: BoundMethod,
    memory_mb: float = DEFAULT_MEMORY_MB,
    alpha_steps: int = 20,
    alpha_final_only: bool = False,
    rounding: bool = True,
) -> MarginBounds:
    """Margin lower bounds by IBP, CROWN or alpha-CROWN over the traced model (see the module docstring).

    Args:
        model: any model torch.fx can trace whose ops have rules (registry.py).
        x: (N, *input_shape) in threat.domain; bounds are computed in x's dtype.
        y: (N,) labels.
        threat: per-example joint threat.
        method: BoundMethod.IBP, CROWN or ALPHA_CROWN.
        memory_mb: CROWN's budget for one chunk's coefficient tensors, MiB.
        alpha_steps: alpha-CROWN's projected gradient steps per chunk.
        alpha_final_only: alpha-CROWN optimises only the final margins' slopes (alpha.optimise_margins).
        rounding: also bound the execution's floating-point error on every margin from the same boxes
            (MarginBounds.execution_error; rounding.py); training objectives, which certify nothing, skip it.
    """
    if memory_mb <= 0 or not math.isfinite(memory_mb):
        raise ValueError(f"memory_mb must be a positive number of MiB, got {memory_mb}")
    graph, logits = traced(model, x)  # traced once per model and input shape (plan_cache.py)
    _check_logits(graph)
    threats = layer_threats(model, threat, x.dtype)
    lb, ub = threat.input_bounds(x)
    execution = execution_of(model) if rounding else None
    errors: list[Tensor] = []
    if method is BoundMethod.IBP:
        bounds = GraphBounds(graph, threats, lb, ub)
        lower = bounds.ibp_margins(y)
        if execution is not None:
            errors.append(graph_forward_error(graph, threats, bounds.boxes, execution))
    else:
        # GraphBounds chunks every backward pass by the budget; alpha-CROWN also keeps its slopes and their
        # autograd graph (every pass's coefficients) per chunk of examples, so it takes fewer examples at once.
        step = len(y)
        if method is BoundMethod.ALPHA_CROWN and alpha_final_only:
            step = _final_pass_examples(graph, len(y), logits.shape[1] - 1, x.element_size(), memory_mb)
        elif method is BoundMethod.ALPHA_CROWN:
            step = _alpha_examples(graph, len(y), x.element_size(), memory_mb)
        parts = []
        for s in range(0, len(y), step):
            bounds = GraphBounds(graph, threats, lb[s : s + step], ub[s : s + step], crown=True, memory_mb=memory_mb)
            ys = y[s : s + step]
            spec = margin_spec(ys, logits.shape[1], x.dtype)
            lower = torch.maximum(bounds.backward(graph.output, spec), bounds.ibp_margins(ys))
            if method is BoundMethod.ALPHA_CROWN:
                lower = torch.maximum(lower, optimise_margins(bounds, spec, alpha_steps, alpha_final_only))
            parts.append(lower)
            if execution is not None:  # CROWN's tightened boxes: any sound boxes bound the error soundly
                errors.append(graph_forward_error(graph, threats, bounds.boxes, execution))
        lower = torch.cat(parts)
    lower = lower.masked_fill(torch.nn.functional.one_hot(y, lower.shape[1]).bool(), 0.0)
    error = margin_error_bound(torch.cat(errors).to(lower.dtype), y) if errors else None
    return MarginBounds(lower=lower, y=y, clean_logits=logits, method=method, execution_error=error)
