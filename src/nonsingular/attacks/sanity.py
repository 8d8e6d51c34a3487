"""Sanity flags: reasons a robust accuracy from an attack may be unreliable (in the spirit of AutoAttack's checks).

An attack only gives an upper bound on robust accuracy; these checks look for signs that the bound is loose:
- ``nested``: a larger threat set (joint vs input-only, per-example vs shared weights, a larger eps on a grid)
  reports a *higher* robust accuracy than a set it contains: the attack missed errors on the larger set.
- ``noise``: uniform random points of the threat set break an example the gradient attack left standing
  (a sign of gradient masking).
- ``gradients``: the loss gradient with respect to the input is non-finite, or exactly zero on many correctly
  classified examples (gradient-based attacks get no signal there).
- ``train-eval``: the model computes differently in train() and eval() mode (BatchNorm, dropout) and its clean
  accuracy differs between them; attacks and the checker use eval() mode.

Each flag names the cells (or the model) concerned.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..formatting import percent
from .pgd import PGD, _Constant

__all__ = ["RandomNoise", "SanityFlag", "gradient_flag", "nested_flag", "noise_flag", "train_eval_flag"]

#: share of correctly classified examples with a zero input gradient above which the gradients are flagged.
FLAT_SHARE = 0.1


@dataclass
class SanityFlag:
    """One reason to distrust some numbers.

    Attributes:
        check: "nested", "noise", "gradients" or "train-eval".
        cells: the cells (or models) concerned, e.g. ["joint per-example"].
        message: one sentence with the numbers.
    """

    check: str
    cells: list[str]
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class RandomNoise(PGD):
    """Uniform random points of the threat set, `restarts` per example, no gradient steps (a sanity check)."""

    steps: int = 1
    restarts: int = 4

    def schedule(self) -> _Constant:
        return _Constant(0.0)


def nested_flag(accuracy: Mapping[str, float | None], pairs: Sequence[tuple[str, str]]) -> SanityFlag | None:
    """Flag pairs (inner, outer) where the outer set, which contains the inner one, has the higher accuracy.

    Args:
        accuracy: cell label -> checked robust accuracy in [0, 1] (None: not evaluated).
        pairs: (inner, outer) labels; outer's threat set contains inner's.
    """
    bad = []
    for inner, outer in pairs:
        a, b = accuracy.get(inner), accuracy.get(outer)
        if a is not None and b is not None and b > a:
            bad.append((inner, outer, a, b))
    if not bad:
        return None
    text = "; ".join(f"{o} {percent(b)} > {i} {percent(a)}" for i, o, a, b in bad)
    return SanityFlag(
        "nested",
        sorted({o for _, o, _, _ in bad}),
        f"robust accuracy rises on a larger threat set ({text}): the attack missed errors there",
        {"pairs": [[i, o] for i, o, _, _ in bad]},
    )


def noise_flag(
    label: str,
    robust: Tensor,
    noise_correct: Tensor,
) -> SanityFlag | None:
    """Flag a cell where random points broke examples the gradient attack left correct.

    Args:
        label: the cell's name.
        robust: (N,) bool, correct after the checked gradient attack.
        noise_correct: (N,) bool, correct at every checked random point.
    """
    missed = robust.cpu() & ~noise_correct.cpu()
    if not bool(missed.any()):
        return None
    n = int(missed.sum())
    return SanityFlag(
        "noise",
        [label],
        f"{label}: random points of the threat set broke {n} example(s) the gradient attack left correct "
        "(gradient masking?)",
        {"examples": torch.nonzero(missed).flatten().tolist()},
    )


def gradient_flag(model: nn.Module, x: Tensor, y: Tensor, label: str = "model") -> SanityFlag | None:
    """Flag non-finite input gradients, or zero ones on more than FLAT_SHARE of the correct examples.

    The gradient is that of the per-example cross-entropy at the clean point, in eval mode.
    """
    was_training = model.training
    model.eval()
    try:
        xg = x.detach().clone().requires_grad_()
        with torch.enable_grad():
            logits = model(xg)
            loss = F.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, xg)
    finally:
        model.train(was_training)
    flat = grad.reshape(len(x), -1)
    nonfinite = ~torch.isfinite(flat).all(dim=1)
    correct = logits.detach().argmax(1) == y
    zero = (flat == 0).all(dim=1) & correct
    n_correct = max(int(correct.sum()), 1)
    problems = []
    if bool(nonfinite.any()):
        problems.append(f"non-finite on {int(nonfinite.sum())} example(s)")
    if int(zero.sum()) > FLAT_SHARE * n_correct:
        problems.append(f"exactly zero on {int(zero.sum())} of {n_correct} correctly classified examples")
    if not problems:
        return None
    return SanityFlag(
        "gradients",
        [label],
        f"{label}: input gradients of the loss are {' and '.join(problems)}; gradient attacks get no signal there",
        {"nonfinite": int(nonfinite.sum()), "zero": int(zero.sum())},
    )


def train_eval_flag(model: nn.Module, x: Tensor, y: Tensor, label: str = "model") -> SanityFlag | None:
    """Flag a model with BatchNorm or dropout whose clean accuracy differs between train() and eval() mode.

    Train mode runs on a copy, so the model's running statistics are not touched.
    """
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    if not any(isinstance(m, kinds) for m in model.modules()):
        return None
    with torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            eval_acc = float((model(x).argmax(1) == y).float().mean())
        finally:
            model.train(was_training)
        twin = copy.deepcopy(model).train()
        gen = torch.random.fork_rng(devices=[])  # dropout draws must not move the caller's random stream
        with gen:
            torch.manual_seed(0)
            train_acc = float((twin(x).argmax(1) == y).float().mean())
    if train_acc == eval_acc:
        return None
    return SanityFlag(
        "train-eval",
        [label],
        f"{label}: clean accuracy {percent(eval_acc)} in eval() mode but {percent(train_acc)} in train() "
        "mode (BatchNorm/dropout); every attack and check here uses eval() mode",
        {"eval_accuracy": eval_acc, "train_accuracy": train_acc},
    )
