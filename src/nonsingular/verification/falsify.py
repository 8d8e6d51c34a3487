"""Falsification first: the project's one attack loop (APGD) on the property's own objective.

For a case (box [l, u]) the attack sees a wrapper network over s in [0, 1]^n (the threat's input ball of radius
1/2 around 1/2, so the loop's input box is exactly the case's box: x = l + (u - l) s) whose outputs are the
violations v_j(x) = max_r (C_j f(x) - d_j)_r of the case's conjunctions. Row i of the batch attacks conjunction
y_i by maximising -v_{y_i}, so every disjunct gets its own restarts; the schedule keeps each row's best point.
A weight threat applies to the wrapped network's layers (their names prefixed by `net.`): the joint attack is
the same loop with weight blocks. Whatever the attack returns is only a candidate: `witness.try_witness` checks
it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..attacks import APGD, AttackLoss, AttackResult
from ..properties import Case
from ..threat import ThreatModel

__all__ = ["BoxObjective", "FalsifyRound", "falsify_case", "wrapped_threat"]


class BoxObjective(nn.Module):
    """s in [0, 1]^n -> (N, J) violations v_j of a case's conjunctions at x = lower + (upper - lower) s."""

    lower: Tensor
    width: Tensor
    C: Tensor
    d: Tensor
    owner: Tensor

    def __init__(self, net: nn.Module, case: Case, input_shape: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        self.net = net
        self.input_shape = input_shape
        self.register_buffer("lower", case.lower.to(dtype))
        self.register_buffer("width", (case.upper - case.lower).to(dtype))
        rows = [c.C.shape[0] for c in case.unsafe]
        self.register_buffer("C", torch.cat([c.C for c in case.unsafe]).to(dtype))
        self.register_buffer("d", torch.cat([c.d for c in case.unsafe]).to(dtype))
        owner = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(rows))
        self.register_buffer("owner", owner)
        self.pieces = len(rows)

    def points(self, s: Tensor) -> Tensor:
        """(N, *input_shape) inputs of the wrapped network."""
        return (self.lower + self.width * s.reshape(s.shape[0], -1)).reshape(s.shape[0], *self.input_shape)

    def forward(self, s: Tensor) -> Tensor:
        y = self.net(self.points(s)).reshape(s.shape[0], -1)
        values = y @ self.C.T - self.d  # (N, R)
        out = values.new_full((s.shape[0], self.pieces), -math.inf)
        index = self.owner[None].expand(s.shape[0], -1)
        result: Tensor = out.scatter_reduce(1, index, values, reduce="amax", include_self=True)
        return result


def _neg_violation(v: Tensor, y: Tensor, _clean: Tensor | None) -> Tensor:
    return -v.gather(1, y[:, None]).squeeze(1)


#: Maximise -v_y: the row's own conjunction; every point is kept by its loss, not by an argmax.
_OBJECTIVE = AttackLoss("property-violation", _neg_violation, seeks_errors=False)


def wrapped_threat(threat: ThreatModel | None) -> ThreatModel:
    """The attack's threat on a BoxObjective: the whole box as the input ball, the weight part renamed."""
    base = threat or ThreatModel()
    layers = None if base.layers is None else tuple(f"net.{n}" for n in base.layers)
    return base.model_copy(
        update={
            "eps_x": 0.5,
            "domain": (0.0, 1.0),
            "layers": layers,
            "layer_eps": tuple((f"net.{n}", v) for n, v in base.layer_eps),
            "channel_eps": tuple((f"net.{n}", v) for n, v in base.channel_eps),
        }
    )


@dataclass
class FalsifyRound:
    """One attack round on a case: the candidates, best first, and the attack's result for their weights."""

    s: Tensor  # (N, n) points in [0, 1]^n, best (lowest violation) first
    x: Tensor  # (N, *input_shape) float64 inputs
    violation: Tensor  # (N,) the attack's own violation of each row's conjunction
    conjunction: Tensor  # (N,) which conjunction each row attacked
    order: Tensor  # (N,) row indices into `result`
    result: AttackResult
    objective: BoxObjective


def falsify_case(
    net: nn.Module,
    case: Case,
    input_shape: tuple[int, ...],
    *,
    threat: ThreatModel | None = None,
    restarts: int = 8,
    steps: int = 50,
    seed: int = 0,
) -> FalsifyRound:
    """One APGD round with `restarts` rows per conjunction; candidates sorted by the attack's violation."""
    dtype = next(net.parameters()).dtype
    objective = BoxObjective(net, case, input_shape, dtype).eval()
    pieces = len(case.unsafe)
    y = torch.arange(pieces).repeat_interleave(restarts)
    s0 = torch.full((len(y), case.lower.numel()), 0.5, dtype=dtype)
    attack = APGD(steps=steps, loss=_OBJECTIVE, seed=seed, batch_size=max(1, len(y)))
    result = attack(objective, s0, y, wrapped_threat(threat))
    v = -_neg_violation(result.logits, y, None)
    order = torch.argsort(v)
    with torch.no_grad():
        s = result.x_adv[order].to(torch.float64)
        x = case.lower + (case.upper - case.lower) * s.reshape(len(s), -1)
    return FalsifyRound(
        s=s, x=x, violation=v[order], conjunction=y[order], order=order, result=result, objective=objective
    )
