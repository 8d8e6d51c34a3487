"""The graph bound engine: interval propagation and CROWN over any traced model (graph.py), one rule per op
(registry.py). IBP walks the nodes forward; CROWN walks backward from a node with a linear spec, summing the
coefficients that reach a node along every path (residual connections), down to the input box.

CROWN tightens, with its own backward pass, every node whose box a non-linearity relaxes (ReLU and max-pool
inputs) unless that box is already exact, and intersects with the interval box; final margins are the better of
CROWN's and IBP's (the last Linear folded into the margin), so CROWN is never looser than IBP.

Only the entries whose bounds can change a user's result are tightened (a ReLU's inactive inputs, ub <= 0 under
the interval box, map to 0 whatever their box: skipped, per example). A node whose range is exactly its box (an
unperturbed affine map of the input box) is never tightened. Rows on (C, H, W) nodes travel as windows
(patches.py) through the rules that have a patch form.

Memory: a backward pass holds (examples x spec rows x node size) coefficients; examples and spec rows are split
so that one chunk's coefficients stay within `memory_mb` (eight tensors of the widest node the pass crosses), and
on the CPU within `CPU_CHUNK_MB` too, however large the budget (larger chunks are slower there).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..threat import PERTURBABLE_TYPES
from .graph import Graph
from .layer_threat import LayerThreat
from .ops_affine import elided_margin_lower
from .patches import Patches
from .registry import DEFAULT_MEMORY_MB, Backward, Box, Node, Rule, dot
from .rounding_bias import check_roundable, read_rounding, rounded_threat

__all__ = ["GraphBounds"]

#: Coefficient tensors of one chunk's size that a backward pass may hold at once (the memory budget's unit).
_LIVE_TENSORS = 8

#: On the CPU, chunks stay within this many MiB even under a larger budget: beyond it, a pass's tensors tend to be
#: fresh pages (blocks near the 32 MiB cap of glibc's dynamic mmap threshold are mapped and returned again and
#: again) and leave the caches, which costs more than the per-chunk overhead of smaller chunks (MLP
#: 784-100-100-100-10, 29 examples, joint CROWN, by budget: 0.128-0.156 CPU s at 256 MiB, 0.097 at 128, 0.088 at
#: 64, 0.098 at 32, 0.122 at 16; BENCHMARKS.md).
CPU_CHUNK_MB = 64.0


class GraphBounds:
    """Boxes of every node of a traced model for a batch of examples, and CROWN backward passes over it.

    Args:
        graph: the traced model.
        threats: the threat at each perturbed weight layer (by module name).
        lb, ub: (N, *input_shape) the input box.
        crown: tighten the boxes that non-linearities relax with CROWN (else pure IBP).
        memory_mb: budget for one backward pass's coefficient tensors, MiB (chunks of examples and spec rows).
        ctx: the backward passes' state (alpha-CROWN's slopes and rows); a fresh one by default.
        floor: boxes (by node name) that every tightened box is intersected with (alpha-CROWN passes CROWN's).
        roundoff: bound the model as executed with this unit roundoff (rounding.py): each weight layer's bias
            radius grows by its rounding over its input box as the boxes are built; `threats` then holds them.
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
        floor: dict[str, Box] | None = None,
        roundoff: float | None = None,
    ) -> None:
        self.graph, self.threats, self.memory_mb = graph, dict(threats), memory_mb
        self._chunk_bytes = int((min(memory_mb, CPU_CHUNK_MB) if lb.device.type == "cpu" else memory_mb) * 2**20)
        if roundoff is not None:
            check_roundable(graph)
            lb, ub = read_rounding(lb, ub, roundoff)
        self.ctx = ctx or Backward(memory_mb=memory_mb)
        self.order = {n.name: i for i, n in enumerate(graph.nodes)}
        self.boxes: dict[str, Box] = {graph.input: (lb, ub)}
        self.frontier = _frontier(graph)
        # Bytes per example-row: the largest a coefficient held, and the limit the current chunk was sized for.
        self._seen: int = 0
        self._guard: int | None = None
        # Reused by every concretisation at the input box while the boxes are built (see `_box_lower`).
        self._scratch: Tensor | None = None
        # node -> the rules of its users when some user relaxes it (the nodes CROWN tightens)
        self.relaxing: dict[str, list[Rule]] = {}
        for n in graph.nodes:
            if n.rule is not None and n.rule.needs_bounds:
                for i in n.inputs:
                    self.relaxing[i] = [_rule(graph.by_name[u]) for u in graph.users[i]]
        chain = _input_chain(graph, self.frontier)  # nodes whose range is exactly their box
        exact = set(chain)
        for node in graph.nodes:
            if roundoff is not None and isinstance(node.module, PERTURBABLE_TYPES):
                box_in = self.boxes[node.inputs[0]]
                self.threats[node.name] = rounded_threat(node.module, node.name, self.threat(node), box_in, roundoff)
            if node.name == graph.input or (node.name == graph.output and self._elided()):
                continue  # an elided last layer is bounded in the margin (ibp_margins), never as a box
            rule = _rule(node)
            lt = self.threat(node)
            box = rule.ibp(node, [self.boxes[i] for i in node.inputs], lt)
            on_chain = all(i in chain for i in node.inputs)
            if (
                (rule.exact_box and all(i in exact for i in node.inputs))
                or (rule.exact_on_box(lt) and on_chain)
                or (on_chain and rule.exact_on_point(lt) and all(_is_point(self.boxes[i]) for i in node.inputs))
            ):
                exact.add(node.name)
            elif crown and node.name in self.relaxing:
                box = self.tighten(node, box)
                if floor is not None and node.name in floor:
                    box = _intersect(box, floor[node.name])
            self.boxes[node.name] = box
        self._scratch = None  # the tightening passes are done: hold no coefficient-sized buffer

    def _track(self, row_bytes: int) -> None:
        """Record the bytes one example's spec row holds in a coefficient tensor; refuse to exceed the guard."""
        if self._guard is not None and row_bytes > self._guard:
            # The chunk was sized for smaller rows: make it impossible to exceed the budget silently.
            raise RuntimeError(
                f"bound engine: a coefficient row of {row_bytes} bytes exceeds the {self._guard} measured when the "
                f"chunks were sized; please report this model"
            )
        self._seen = max(self._seen, row_bytes)

    def threat(self, node: Node) -> LayerThreat | None:
        return self.threats.get(node.name) if node.module is not None else None

    def _per_row(self, start: str, itemsize: int) -> int:
        """Bytes one example's spec row may hold at once in a backward pass from `start`: up to eight coefficient
        tensors of the widest node it crosses (a rule's input and output, its temporaries such as |a| and the
        clamped parts, and sums pending on parallel paths)."""
        widest = max(math.prod(self.graph.by_name[name].shape) for name in self.graph.ancestors(start))
        return _LIVE_TENSORS * widest * itemsize

    def _chunks(
        self, start: str, n: int, rows: int, itemsize: int, spec_rows: int = 1
    ) -> Iterator[tuple[int, int, int, int]]:
        """(e0, e1, r0, r1): example and row ranges whose coefficients fit the memory budget (at least one each);
        each row stands for `spec_rows` spec rows."""
        budget = self._chunk_bytes
        per_row = spec_rows * self._per_row(start, itemsize)
        ex_step = max(1, min(n, budget // (per_row * max(1, rows))))
        row_step = max(1, min(rows, budget // (per_row * ex_step)))
        for e0 in range(0, n, ex_step):
            for r0 in range(0, rows, row_step):
                yield e0, min(n, e0 + ex_step), r0, min(rows, r0 + row_step)

    def backward(self, start: str, spec: Tensor, ctx: Backward | None = None, scope: int = 0) -> Tensor:
        """(N, S) lower bounds on spec . value(start) over the threat set, chunked within the memory budget.

        spec: (B, S, *shape of start), B = 1 (the same rows for every example) or N.
        ctx: the pass's state (default: this object's, which alpha-CROWN sets); scope tells passes apart.
        """
        n = self.boxes[self.graph.input][0].shape[0]
        rows = int(spec.shape[1])
        parts: list[Tensor] = []
        for e0, e1, r0, r1 in self._chunks(start, n, rows, spec.element_size()):
            sub = spec[:, r0:r1] if spec.shape[0] == 1 else spec[e0:e1, r0:r1]
            part = self._backward(start, sub, slice(e0, e1), ctx, (scope, e0, r0))
            if r0 == 0:
                parts.append(part)
            else:
                parts[-1] = torch.cat([parts[-1], part], dim=1)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _backward(self, start: str, spec: Tensor, examples: slice, ctx: Backward | None, scope: Any) -> Tensor:
        """One chunk of `backward`: the examples in `examples`, spec (B, S, *shape) with B = 1 or their count;
        or, as an integer (n, R) tensor of flat entry indices, the rows e_i then -e_i (Rule.backward_rows)."""
        ctx = ctx or self.ctx
        rows = spec if not spec.is_floating_point() else None
        dtype = self.boxes[self.graph.input][0].dtype
        ctx.scope = (start, int(spec.shape[1]) * (2 if rows is not None else 1), scope)
        coef: dict[str, Any] = {start: spec}
        c: Tensor = torch.zeros((), dtype=dtype, device=spec.device)
        for node in reversed(self.graph.nodes[: self.order[start] + 1]):
            a = coef.pop(node.name, None)
            if a is None or node.name == self.frontier:
                if a is not None:
                    coef[node.name] = a
                continue
            boxes = [(lb[examples], ub[examples]) for lb, ub in (self.boxes[i] for i in node.inputs)]
            rule, lt = _rule(node), self.threat(node)
            done = None
            if rows is not None and node.name == start:
                if len(node.shape) == 3:  # a (C, H, W) node: its rows' coefficients start as 1 x 1 windows
                    done = rule.backward_patches(node, Patches.onehot(rows, node.shape, dtype), boxes, lt, ctx)
                if done is None:
                    done = rule.backward_rows(node, rows, boxes, lt, ctx)
            elif isinstance(a, Patches):
                done = rule.backward_patches(node, a, boxes, lt, ctx)
                if done is None:
                    self._track(math.prod(node.shape) * a.values.element_size())
                    a = a.dense()
            parts, offset = done if done is not None else rule.backward(node, a, boxes, lt, ctx)
            del a, done  # free this node's coefficients before the next node's are made
            c = c + offset
            for name, part in zip(node.inputs, parts, strict=True):
                if part is not None:
                    coef[name] = _accumulate(coef[name], part) if name in coef else part
                    held = coef[name].values if isinstance(coef[name], Patches) else coef[name]
                    self._track(held[0, 0].numel() * held.element_size())
        lb, ub = self.boxes[self.frontier]
        lb, ub = lb[examples], ub[examples]
        lower = c.expand(lb.shape[0], ctx.scope[1]) if c.dim() < 2 else c.expand(lb.shape[0], -1)
        a = coef.get(self.frontier)
        if isinstance(a, Patches):
            lower = lower + a.dot(lb, ub)
        elif a is not None:
            lower = self._box_lower(lower, a, lb, ub)
        return lower

    def _box_lower(self, lower: Tensor, a: Tensor, lb: Tensor, ub: Tensor) -> Tensor:
        """lower + min over h in [lb, ub] of a . h, as lower + a+ . lb + a- . ub.

        Without autograd the clamped parts are written into one buffer that every tightening pass reuses: the
        same values and products as two fresh tensors, bit for bit, without allocating two coefficient-sized
        tensors per pass (on an MLP's first layer, fresh pages cost more than the clamps: BENCHMARKS.md).
        """
        if torch.is_grad_enabled() and a.requires_grad:
            return lower + dot(a.clamp(min=0), lb) + dot(a.clamp(max=0), ub)
        n = a.numel()
        held = self._scratch
        if held is None or held.numel() < n or held.dtype != a.dtype or held.device != a.device:
            held = torch.empty(n, dtype=a.dtype, device=a.device)
            self._scratch = held
        part = held[:n].view(a.shape)
        lower = lower + dot(torch.clamp(a, min=0, out=part), lb)
        return lower + dot(torch.clamp(a, max=0, out=part), ub)

    def _rows(self, node: Node, box: Box) -> tuple[Tensor, Tensor]:
        """(N, S) flat indices of the entries to tighten, padded with the index `size` (a dummy), and (N, S) which
        are real: the entries some relaxing user depends on (ReLU: the unstable ones), per example."""
        if self.ctx.optimise and node.name in self.ctx.rows:
            return self.ctx.rows[node.name]
        lo, hi = box
        n, size = lo.shape[0], math.prod(node.shape)
        mask = torch.zeros((n, size), dtype=torch.bool, device=lo.device)
        for rule in self.relaxing[node.name]:
            # A user that relaxes nothing reads the whole box (e.g. a residual add): every entry matters.
            entries = rule.relaxed_entries(lo.detach(), hi.detach()) if rule.needs_bounds else None
            if entries is None:
                mask[:] = True
                break
            mask |= entries.reshape(n, size)
        counts = mask.sum(dim=1)
        width = int(counts.max()) if n else 0
        # A stable sort of ~mask puts each example's selected entries first, in index order.
        order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :width]
        valid = torch.arange(width, device=lo.device)[None, :] < counts[:, None]
        rows = (torch.where(valid, order, size), valid)
        if self.ctx.optimise:
            self.ctx.rows[node.name] = rows
        return rows

    def _tighten_chunks(
        self, node: Node, index: Tensor, valid: Tensor, itemsize: int
    ) -> Iterator[tuple[int, int, int, int]]:
        """Chunks of (examples, entry pairs) for tightening `node`. Rows on a (C, H, W) node travel as windows,
        far smaller than the dense estimate: the first chunk is sized as if dense, the largest coefficient it
        held per row is measured, and the rest is sized by that (every chunk runs under a guard that refuses to
        make coefficients larger than measured; if one would, the remaining chunks are sized as dense)."""
        n, pairs = index.shape
        dense = list(self._chunks(node.name, n, pairs, itemsize, spec_rows=2))
        if len(node.shape) != 3 or len(dense) == 1:
            yield from dense
            return
        e0, e1, r0, r1 = dense[0]
        self._seen = 0
        yield e0, e1, r0, r1
        measured = self._seen
        budget = self._chunk_bytes
        per_pair = 2 * _LIVE_TENSORS * max(1, measured)
        rest: list[tuple[int, int, int, int]] = []
        if r1 < pairs:  # the first examples' remaining rows
            step = max(1, budget // (per_pair * (e1 - e0)))
            rest += [(e0, e1, r, min(pairs, r + step)) for r in range(r1, pairs, step)]
        if e1 < n:
            ex_step = max(1, min(n - e1, budget // (per_pair * pairs)))
            row_step = max(1, min(pairs, budget // (per_pair * ex_step)))
            rest += [
                (e, min(n, e + ex_step), r, min(pairs, r + row_step))
                for e in range(e1, n, ex_step)
                for r in range(0, pairs, row_step)
            ]
        self._guard = measured
        try:
            yield from rest
        finally:
            self._guard = None

    def tighten(self, node: Node, box: Box) -> Box:
        """Intersect node's interval box with CROWN's bounds on the entries its relaxing users depend on."""
        lo, hi = box
        n, size = lo.shape[0], math.prod(node.shape)
        index, valid = self._rows(node, box)
        if index.shape[1] == 0:
            return box
        lower = torch.cat([lo.reshape(n, size), lo.new_zeros((n, 1))], dim=1)
        upper = torch.cat([hi.reshape(n, size), hi.new_zeros((n, 1))], dim=1)
        lowers, uppers = [], []
        for e0, e1, r0, r1 in self._tighten_chunks(node, index, valid, lo.element_size()):
            # Two spec rows per entry i: e_i (its lower bound) and -e_i (its upper bound).
            sel = index[e0:e1, r0:r1]
            width = int(valid[e0:e1, r0:r1].sum(dim=1).max())
            if width == 0:
                continue
            # Widths rounded up to four sizes per octave (at most 25% padded rows, written to the dummy column):
            # chunks of repeating sizes let the C heap reuse more freed blocks (SmallCNN, weight threat, 256 MiB
            # budget: 3.3 -> 1.1 GB peak RSS for 10 examples, 6.0 -> 5.4 GB for 20; runtime/allocator.py does
            # the rest; BENCHMARKS.md).
            step = 1 << max(0, width.bit_length() - 3)
            width = min(r1 - r0, -(-width // step) * step)
            sel = sel[:, :width]
            # Padded rows read entry size - 1 and are written to the dummy column.
            bound = self._backward(node.name, sel.clamp(max=size - 1), slice(e0, e1), None, (e0, r0))
            lowers.append((e0, e1, sel, bound[:, :width]))
            uppers.append((e0, e1, sel, -bound[:, width:]))
        lower = _scatter_rows(lower, lowers)[:, :size]
        upper = _scatter_rows(upper, uppers)[:, :size]
        return _intersect(box, (lower.reshape(lo.shape), upper.reshape(hi.shape)))

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


def _accumulate(x: Any, y: Any) -> Any:
    """The sum of two coefficient terms on one node (dense tensors or patches; a mixed sum is dense)."""
    if isinstance(x, Patches) and isinstance(y, Patches):
        return x + y
    return (x.dense() if isinstance(x, Patches) else x) + (y.dense() if isinstance(y, Patches) else y)


def _intersect(box: Box, other: Box) -> Box:
    """The intersection of two sound boxes; if rounding crosses them, an interval containing both end points."""
    lo, hi = torch.maximum(box[0], other[0]), torch.minimum(box[1], other[1])
    return torch.minimum(lo, hi), torch.maximum(lo, hi)


def _scatter_rows(flat: Tensor, parts: list[tuple[int, int, Tensor, Tensor]]) -> Tensor:
    """flat (N, size + 1) with each part's values (n, S) written at its indices (n, S) of examples e0..e1 (padded
    indices point at the dummy last column, which the caller drops). Out of place, so autograd follows."""
    if not parts:
        return flat
    pieces = []
    for e0 in sorted({p[0] for p in parts}):
        mine = [p for p in parts if p[0] == e0]
        e1 = mine[0][1]
        index = torch.cat([p[2] for p in mine], dim=1)
        values = torch.cat([p[3] for p in mine], dim=1)
        pieces.append((e0, e1, flat[e0:e1].scatter(1, index, values)))
    rows = []
    last = 0
    for e0, e1, piece in pieces:
        if e0 > last:
            rows.append(flat[last:e0])
        rows.append(piece)
        last = e1
    if last < flat.shape[0]:
        rows.append(flat[last:])
    return torch.cat(rows)


def _is_point(box: Box) -> bool:
    """Whether every entry's range is one value (an unperturbed input)."""
    return bool(torch.equal(box[0], box[1]))


def _input_chain(graph: Graph, frontier: str) -> set[str]:
    """The input and its element-wise ops up to the frontier: their range is exactly their box."""
    chain, name = {graph.input}, graph.input
    while name != frontier:
        name = graph.users[name][0]
        chain.add(name)
    return chain


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
