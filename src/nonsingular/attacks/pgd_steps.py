"""The pieces of one projected-gradient step, shared by every variant of the loop in `pgd.PGD`.

Value and gradient of the loss (fused MLP path or autograd through the perturbation hooks), the sign step on the
inputs clipped to their box, the step on the weight blocks, and keep-best bookkeeping (per example: the first
misclassified point, else the highest-loss final iterate). Random starts keyed by global example index live in
`Seeds`, so results do not depend on batching or sharding.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .fused_mlp import FusedMLP
from .losses import AttackLoss, per_example
from .perturbation import LayerPath, WeightBlock, installed, per_row


def value_and_grad(
    model: nn.Module,
    fused: FusedMLP | None,
    x: Tensor,
    blocks: list[WeightBlock],
    variables: list[Tensor],
    objective: AttackLoss,
    y: Tensor,
    clean: Tensor | None,
    *,
    input_grad: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One pass of the loop: logits (n, K) and per-example loss (n,), both detached, and, when `need_grad`, the
    gradients of the summed loss: [dL/dx if input_grad] + [dL/dv for v in variables].

    A plain MLP whose weight blocks all take Lemma 1 goes through `fused_mlp` (the same numbers without the
    autograd engine); every other model through its hooked forward pass and autograd.
    """
    if fused is not None:
        return fused.value_and_grad(x, blocks, objective, y, clean, input_grad, need_grad)
    xb = x.requires_grad_(input_grad and need_grad)
    wrt = ([xb] if input_grad else []) + variables
    # The whole graph, its sum included, is built with gradients on: a caller's torch.no_grad() must not cut it.
    with torch.enable_grad(), installed(blocks):
        logits = model(xb)
        losses = per_example(objective(logits, y, clean))
        total = losses.sum()
    grads = list(torch.autograd.grad(total, wrt)) if need_grad and wrt else []
    return logits.detach(), losses.detach(), grads


def block_state(blocks: list[WeightBlock]) -> list[Tensor]:
    """What a per-example block needs kept: its variables, and for Lemma 1 the layer input h' it saw."""
    state: list[Tensor] = [v for blk in blocks for v in blk.variables]
    return state + [blk.h_seen for blk in blocks if blk.path is LayerPath.LEMMA1 and blk.h_seen is not None]


def load_state(blocks: list[WeightBlock], state: list[Tensor]) -> None:
    n_vars = sum(len(blk.variables) for blk in blocks)
    for v, kept in zip([v for blk in blocks for v in blk.variables], state[:n_vars], strict=True):
        v.copy_(kept)
    for blk, h in zip([b for b in blocks if b.path is LayerPath.LEMMA1], state[n_vars:], strict=True):
        blk.h_seen = h


class Kept:
    """Per-example state to return: the first point where the example was misclassified, else the final
    iterate with the highest loss over restarts. Only rows that change are copied, so keeping is cheap.
    """

    def __init__(self) -> None:
        self.state: list[Tensor] = []
        self.fooled: Tensor | None = None
        self.loss: Tensor | None = None

    def update(self, fooled: Tensor, loss: Tensor, state: list[Tensor], final: bool) -> None:
        if self.fooled is None or self.loss is None:  # the first update (both are set together)
            self.state = [t.detach().clone() for t in state]
            self.fooled, self.loss = fooled.clone(), loss.clone()
            return
        take = fooled & ~self.fooled
        if final:  # end of a restart: a still-correct example keeps the final point with the higher loss
            take |= ~fooled & ~self.fooled & (loss > self.loss)
        rows = torch.nonzero(take).flatten()
        if len(rows):
            for kept, t in zip(self.state, state, strict=True):
                kept[rows] = t.detach()[rows]
            self.fooled[rows] = fooled[rows]
            self.loss[rows] = loss[rows]


def ascend(blocks: list[WeightBlock], grads: Sequence[Tensor], frac: float | Tensor) -> None:
    """Step every block with its slice of the gradients (blocks own len(block.variables) tensors each)."""
    k = 0
    for blk in blocks:
        blk.ascend(grads[k : k + len(blk.variables)], frac)
        k += len(blk.variables)


def step_input(
    xb: Tensor, grad: Tensor, eta: float | Tensor, eps_x: float, abs_step: float | None, lb: Tensor, ub: Tensor
) -> Tensor:
    """Sign step on the inputs, clipped to their box: eta x eps_x (or abs_step) per element. A new tensor, as
    the clamp lays it out (copying into x's own layout can change which convolution kernel runs next)."""
    direction = torch.sign(grad, out=grad)  # the gradient is the loop's own temporary: no new tensor
    if isinstance(eta, Tensor):
        moved = xb + direction * per_row(eta.to(xb.dtype) * eps_x, xb)
    else:
        moved = torch.add(xb, direction, alpha=abs_step if abs_step is not None else eta * eps_x)
    return torch.clamp(moved, lb, ub).detach()


def keep_rows(best: list[Tensor] | None, moving: list[Tensor], rows: Tensor, shared: bool) -> list[Tensor]:
    """Copy the rows `rows` (bool, one per example; shared: one for all) of `moving` into `best`."""
    if best is None:
        return [v.detach().clone() for v in moving]
    load_rows(best, moving, rows, shared)
    return best


def load_rows(dst: list[Tensor], src: list[Tensor], rows: Tensor, shared: bool) -> None:
    for d, v in zip(dst, src, strict=True):
        if shared:
            if bool(rows.any()):
                d.copy_(v)
        else:
            d[rows] = v.detach()[rows]


class Seeds:
    """Random starts keyed by global example index (and seed, restart): independent of batching and sharding.

    Per-example noise is drawn in fixed chunks of `CHUNK` global rows, each from its own generator, and sliced:
    rows i..j get the same numbers whether they are one batch, part of a larger one or a rank's share of one.
    """

    CHUNK = 64

    def __init__(self, seed: int, first_index: int, ids: Tensor | None = None) -> None:
        self.seed, self.first_index, self.ids = seed, first_index, ids

    def _make(self, *key: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, *key]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(state))

    def rows(self, restart: int, start: int, stop: int) -> Callable[[torch.Size], Tensor]:
        """U[0, 1) noise for rows start..stop of x, one independent stream per call (x, then each variable)."""
        first, last = self.first_index + start, self.first_index + stop
        streams = itertools.count()

        def uniform(shape: torch.Size) -> Tensor:
            assert shape[0] == stop - start, "per-example noise must have one row per example"
            stream = next(streams)
            if stop == start:
                return torch.empty(shape)
            if self.ids is not None:  # scattered global indices: the same numbers as their contiguous runs
                ids = self.ids[start:stop]
                out = torch.empty((len(ids), *shape[1:]))
                for c in torch.unique(ids // self.CHUNK).tolist():
                    block = torch.rand((self.CHUNK, *shape[1:]), generator=self._make(restart, 0, stream, c))
                    pick = ids // self.CHUNK == c
                    out[pick] = block[ids[pick] % self.CHUNK]
                return out
            lo, hi = first // self.CHUNK, -(-last // self.CHUNK)
            chunks = [
                torch.rand((self.CHUNK, *shape[1:]), generator=self._make(restart, 0, stream, c)) for c in range(lo, hi)
            ]
            offset = first - lo * self.CHUNK
            return torch.cat(chunks)[offset : offset + stop - start]

        return uniform

    def shared(self, restart: int) -> torch.Generator:
        return self._make(restart, 1)
