"""The graph bound engine: interval propagation and CROWN over any traced model (graph.py), one rule per op
(registry.py). IBP walks the nodes forward; CROWN walks backward from a node with a linear spec, summing the
coefficients that reach a node along every path (residual connections), down to the input box.

CROWN tightens, with its own backward pass, every node whose box a non-linearity relaxes (ReLU and max-pool
inputs) unless that box is already exact, and intersects with the interval box; final margins are the better of
CROWN's and IBP's (the last Linear folded into the margin), so CROWN is never looser than IBP.

Memory: a backward pass holds (examples x spec rows x node size) coefficients; examples and then spec rows are
split so that one chunk's coefficients stay within `memory_mb` (an estimate: four tensors of that size).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import cast

import torch
from torch import Tensor, nn

from .graph import Graph
from .layers import LayerThreat
from .ops_affine import elided_margin_lower
from .registry import DEFAULT_MEMORY_MB, Backward, Box, Node, Rule, dot

__all__ = ["GraphBounds"]


class GraphBounds:
    """Boxes of every node of a traced model for one chunk of examples, and CROWN backward passes over it.

    Args:
        graph: the traced model.
        threats: the threat at each perturbed weight layer (by module name).
        lb, ub: (N, *input_shape) the input box.
        crown: tighten the boxes that non-linearities relax with CROWN (else pure IBP).
        memory_mb: budget for one backward pass's coefficients.
    """

    def __init__(
        self,
        graph: Graph,
        threats: dict[str, LayerThreat],
        lb: Tensor,
        ub: Tensor,
        crown: bool = False,
        memory_mb: float = DEFAULT_MEMORY_MB,
        ctx: Backward | None = None,
    ) -> None:
        self.graph, self.threats, self.memory_mb = graph, threats, memory_mb
        self.ctx = ctx or Backward(memory_mb=memory_mb)
        self.order = {n.name: i for i, n in enumerate(graph.nodes)}
        self.boxes: dict[str, Box] = {graph.input: (lb, ub)}
        self.frontier = _frontier(graph)
        relaxed = {i for n in graph.nodes if n.rule is not None and n.rule.needs_bounds for i in n.inputs}
        exact = {graph.input}
        for node in graph.nodes:
            if node.name == graph.input or (node.name == graph.output and self._elided()):
                continue  # an elided last layer is bounded in the margin (ibp_margins), never as a box
            rule = _rule(node)
            box = rule.ibp(node, [self.boxes[i] for i in node.inputs], self.threat(node))
            if rule.exact_box and all(i in exact for i in node.inputs):
                exact.add(node.name)
            elif crown and node.name in relaxed:
                box = self.tighten(node, box)
            self.boxes[node.name] = box

    def threat(self, node: Node) -> LayerThreat | None:
        return self.threats.get(node.name) if node.module is not None else None

    def backward(self, start: str, spec: Tensor, ctx: Backward | None = None, scope: int = 0) -> Tensor:
        """(N, S) lower bounds on spec . value(start) over the threat set.

        spec: (B, S, *shape of start), B = 1 (the same rows for every example) or N.
        ctx: the pass's state (default: this object's, which alpha-CROWN sets); scope tells passes apart.
        """
        ctx = ctx or self.ctx
        ctx.scope = (start, int(spec.shape[1]), scope)
        coef: dict[str, Tensor] = {start: spec}
        c: Tensor = torch.zeros((), dtype=spec.dtype, device=spec.device)
        for node in reversed(self.graph.nodes[: self.order[start] + 1]):
            a = coef.pop(node.name, None)
            if a is None or node.name == self.frontier:
                if a is not None:
                    coef[node.name] = a
                continue
            boxes = [self.boxes[i] for i in node.inputs]
            parts, offset = _rule(node).backward(node, a, boxes, self.threat(node), ctx)
            c = c + offset
            for name, part in zip(node.inputs, parts, strict=True):
                if part is not None:
                    coef[name] = coef[name] + part if name in coef else part
        lb, ub = self.boxes[self.frontier]
        lower = c.expand(lb.shape[0], spec.shape[1]) if c.dim() < 2 else c.expand(lb.shape[0], -1)
        a = coef.get(self.frontier)
        if a is not None:
            lower = lower + dot(a.clamp(min=0), lb) + dot(a.clamp(max=0), ub)
        return lower

    def _row_chunks(self, rows: int, n: int, itemsize: int) -> Iterator[tuple[int, int]]:
        widest = max(math.prod(node.shape) for node in self.graph.nodes)
        per_row = 4 * n * widest * itemsize
        step = max(1, min(rows, int(self.memory_mb * 2**20) // per_row))
        for s in range(0, rows, step):
            yield s, min(rows, s + step)

    def tighten(self, node: Node, box: Box) -> Box:
        """Intersect node's interval box with CROWN's bounds on each of its entries."""
        lo, hi = box
        n = math.prod(node.shape)
        lower, upper = lo.new_empty((lo.shape[0], n)), hi.new_empty((hi.shape[0], n))
        for s, e in self._row_chunks(2 * n, lo.shape[0], lo.element_size()):
            # Rows s..e of [I; -I]: lower bounds of entries, then (negated) upper bounds.
            spec = lo.new_zeros((e - s, n))
            rows = torch.arange(s, e, device=lo.device)
            spec[rows - s, rows % n] = torch.where(rows < n, 1.0, -1.0).to(lo.dtype)
            bound = self.backward(node.name, spec.reshape(1, e - s, *node.shape), scope=s)
            lower_rows, upper_rows = rows < n, rows >= n
            lower[:, rows[lower_rows]] = bound[:, lower_rows]
            upper[:, rows[upper_rows] - n] = -bound[:, upper_rows]
        lo = torch.maximum(lo, lower.reshape(lo.shape))
        hi = torch.minimum(hi, upper.reshape(hi.shape))
        # Both are sound; if rounding crosses them, keep an interval that contains both end points.
        return torch.minimum(lo, hi), torch.maximum(lo, hi)

    def _elided(self) -> bool:
        """Whether the output is a Linear on (N, features), folded into the margins rather than boxed."""
        out = self.graph.by_name[self.graph.output]
        return type(out.module) is nn.Linear and len(self.graph.by_name[out.inputs[0]].shape) == 1

    def ibp_margins(self, y: Tensor) -> Tensor:
        """(N, K) margin lower bounds from the boxes, the last Linear folded into the margin when there is one."""
        out = self.graph.by_name[self.graph.output]
        if self._elided():
            return elided_margin_lower(cast(nn.Linear, out.module), self.threat(out), *self.boxes[out.inputs[0]], y)
        lb, ub = self.boxes[out.name]
        return lb.gather(1, y[:, None]) - ub


def _rule(node: Node) -> Rule:
    if node.rule is None:  # only the input placeholder has none, and no pass evaluates it
        raise RuntimeError(f"node '{node.name}' has no rule")
    return node.rule


def _frontier(graph: Graph) -> str:
    """The end of the input's chain of element-wise ops (Normalize, Flatten, ...): their box is the exact image
    of the input box, and nothing else reads the chain, so backward passes minimise over that box directly."""
    name = graph.input
    while len(graph.users[name]) == 1:
        user = graph.by_name[graph.users[name][0]]
        if not (user.rule is not None and user.rule.elementwise and user.name != graph.output):
            break
        name = user.name
    return name
