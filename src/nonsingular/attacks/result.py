"""What an attack found: adversarial inputs, its logits, and the weight perturbation behind them.

The perturbation stays in the attack's own blocks (`perturbation.WeightBlock`) until asked for: explicit
weights W' are materialised only for the examples the checker or a training step requests. Results of
attacks on subsets merge per example (`merge_rows`), and a result restricts to a subset (`subset`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..threat import Scope, ThreatModel
from .perturbation import WeightBlock

__all__ = ["AttackResult"]


@dataclass
class _Chunk:
    """The attack's final state on examples [start, stop): its weight blocks hold the chosen perturbation."""

    start: int
    stop: int
    blocks: list[WeightBlock]
    #: for results merged from attacks on subsets (`merge_rows`): the global example index of each kept row,
    #: and that row's index in the blocks. None: the blocks' rows are examples start..stop in order.
    rows: Tensor | None = None
    local: Tensor | None = None


@dataclass
class AttackResult:
    """What an attack found.

    Attributes:
        x_adv: (N, *input_shape) adversarial inputs.
        logits: (N, classes) the attack's own logits at (x_adv, perturbed weights).
        threat: the threat the attack ran under.
        attack: repr of the attack configuration.
        paths: layer name -> "lemma1" | "explicit" | "shared", how each perturbed layer was handled.
    """

    x_adv: Tensor
    logits: Tensor
    threat: ThreatModel
    attack: str
    paths: dict[str, str]
    _chunks: list[_Chunk] = field(default_factory=list, repr=False)

    @property
    def shared(self) -> bool:
        return self.threat.scope is Scope.SHARED

    def weight_blocks(self) -> list[WeightBlock]:
        """The blocks holding the found weight perturbation (each chunk's, in example order; shared: one set).

        For training objectives that re-apply the perturbation with `perturbation.installed(blocks)`.
        """
        return [blk for chunk in self._chunks for blk in chunk.blocks]

    def perturbed_weights(self, start: int = 0, stop: int | None = None) -> dict[str, Tensor]:
        """Explicit perturbed parameters W' (and b') by parameter name, e.g. {"2.weight": ...}.

        Per-example scope: tensors of shape (stop - start, *param.shape) for examples [start, stop).
        Shared scope: one tensor of shape param.shape, whatever the range. Empty for input-only threats.
        """
        stop = len(self.x_adv) if stop is None else stop
        if self.shared:
            return _merge([b.materialise() for b in self._chunks[0].blocks])
        if any(chunk.rows is not None for chunk in self._chunks):
            return self._scattered_weights(start, stop)
        parts: list[dict[str, Tensor]] = []
        for chunk in self._chunks:
            lo, hi = max(start, chunk.start), min(stop, chunk.stop)
            if lo >= hi or not chunk.blocks:
                continue
            rows = slice(lo - chunk.start, hi - chunk.start)
            parts.append(_merge([b.materialise(rows) for b in chunk.blocks]))
        if not parts:
            return {}
        if len(parts) == 1:  # the common case: one chunk holds the range; a cat would copy every weight once more
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _scattered_weights(self, start: int, stop: int) -> dict[str, Tensor]:
        """perturbed_weights for a merged result: each example's rows come from the chunk that owns it."""
        out: dict[str, Tensor] = {}
        for chunk in self._chunks:
            if not chunk.blocks:
                continue
            rows = chunk.rows if chunk.rows is not None else torch.arange(chunk.start, chunk.stop)
            local = chunk.local if chunk.local is not None else torch.arange(chunk.stop - chunk.start)
            pick = (rows >= start) & (rows < stop)
            if not bool(pick.any()):
                continue
            for name, value in _merge([b.materialise(local[pick].to(b.weight.device)) for b in chunk.blocks]).items():
                if name not in out:
                    out[name] = torch.empty((stop - start, *value.shape[1:]), dtype=value.dtype, device=value.device)
                out[name][(rows[pick] - start).to(value.device)] = value
        return out

    def merge_rows(self, other: AttackResult, rows: Tensor, take: Tensor) -> AttackResult:
        """A per-example result where examples rows[take] come from `other` (an attack on x[rows]).

        Args:
            other: result of an attack on the examples `rows` (same threat, per-example scope).
            rows: (m,) global indices of other's examples.
            take: (m,) bool, which of other's examples replace this result's.
        """
        if self.shared or other.shared:
            raise ValueError("shared-scope results cannot be merged per example: one perturbation serves all")
        taken = rows[take]
        x_adv, logits = self.x_adv.clone(), self.logits.clone()
        x_adv[taken], logits[taken] = other.x_adv[take], other.logits[take]
        owner = torch.zeros(len(self.x_adv), dtype=torch.bool)
        owner[taken.cpu()] = True
        chunks = []
        for chunk in self._chunks:  # drop the rows now owned by `other`
            g = chunk.rows if chunk.rows is not None else torch.arange(chunk.start, chunk.stop)
            loc = chunk.local if chunk.local is not None else torch.arange(chunk.stop - chunk.start)
            keep = ~owner[g]
            chunks.append(_Chunk(chunk.start, chunk.stop, chunk.blocks, g[keep], loc[keep]))
        position = torch.nonzero(take.cpu()).flatten()  # other's local example index of each taken row
        for chunk in other._chunks:
            g = chunk.rows if chunk.rows is not None else torch.arange(chunk.start, chunk.stop)
            loc = chunk.local if chunk.local is not None else torch.arange(chunk.stop - chunk.start)
            keep = torch.isin(g, position)
            chunks.append(_Chunk(chunk.start, chunk.stop, chunk.blocks, rows.cpu()[g[keep]], loc[keep]))
        return AttackResult(x_adv, logits, self.threat, self.attack, {**self.paths, **other.paths}, chunks)

    def subset(self, rows: Tensor) -> AttackResult:
        """The per-example result on examples `rows` only ((m,) increasing indices), renumbered 0..m-1: what
        the checker needs to check just those examples."""
        if self.shared:
            raise ValueError("a shared-scope result is one perturbation for all examples: it has no subsets")
        rows = rows.cpu()
        position = torch.full((len(self.x_adv),), -1, dtype=torch.long)
        position[rows] = torch.arange(len(rows))
        chunks = []
        for chunk in self._chunks:
            g = chunk.rows if chunk.rows is not None else torch.arange(chunk.start, chunk.stop)
            loc = chunk.local if chunk.local is not None else torch.arange(chunk.stop - chunk.start)
            keep = position[g] >= 0
            chunks.append(_Chunk(chunk.start, chunk.stop, chunk.blocks, position[g[keep]], loc[keep]))
        idx = rows.to(self.x_adv.device)
        return AttackResult(self.x_adv[idx], self.logits[idx], self.threat, self.attack, self.paths, chunks)


def _merge(dicts: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for d in dicts:
        out.update(d)
    return out
