"""Robust accuracy of a model under input-only, weight-only and joint attacks, in both scopes.

Every number reported here comes from the verifier: the attack's perturbation is checked against the threat
set and predictions are recomputed with the ordinary module. A cell whose perturbation fails the check reports
no accuracy (None) and says why.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed as dist
from ._version import __version__
from .attacks import PGD
from .threat import Scope, ThreatModel
from .verify import verify

__all__ = ["KINDS", "SCOPES", "Cell", "RobustnessReport", "evaluate_robustness"]

KINDS = ("input", "weight", "joint")
SCOPES = (Scope.PER_EXAMPLE.value, Scope.SHARED.value)

#: progress(label, done, total)
EvalProgress = Callable[[str, int, int], None]


@dataclass
class Cell:
    """One (kind, scope) evaluation.

    Attributes:
        accuracy: verified robust accuracy in [0, 1] (correct on the clean input and on the attack's point);
            None if the perturbation left the threat set.
        attack_accuracy: accuracy by the attack's own logits (before verification).
        verified: the perturbation passed the verifier.
        max_logit_gap: largest |verifier - attack| logit difference.
        seconds: attack wall time.
        threat: the full threat of this cell.
        paths: layer -> path ("lemma1", "explicit", "shared").
        same_as: set when the cell is identical by definition to another (input-only in shared scope).
    """

    accuracy: float | None
    attack_accuracy: float
    verified: bool
    max_logit_gap: float
    seconds: float
    threat: dict[str, Any]
    paths: dict[str, str]
    problems: list[str] = field(default_factory=list)
    same_as: str | None = None


@dataclass
class RobustnessReport:
    """Clean and robust accuracies with everything needed to reproduce them."""

    clean_accuracy: float
    n_examples: int
    threat: dict[str, Any]
    attack: str
    cells: dict[str, dict[str, Cell | None]]
    seconds: float
    versions: dict[str, str] = field(default_factory=dict)

    def accuracy(self, kind: str, scope: str) -> float | None:
        cell = self.cells[kind][scope]
        return None if cell is None else cell.accuracy

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema"] = "nonsingular.evaluation/1"
        return data


def _versions() -> dict[str, str]:
    return {"nonsingular": __version__, "torch": torch.__version__, "python": platform.python_version()}


def threats_for(threat: ThreatModel) -> dict[str, ThreatModel | None]:
    """The input-only, weight-only and joint threats derived from `threat` (None where the kind is empty)."""
    derived = {"input": threat.input_only(), "weight": threat.weight_only(), "joint": threat}
    return {k: (t if t.kind == k else None) for k, t in derived.items()}


def attack_cell(model, x, y, threat, attack, clean_correct, tick) -> tuple[Cell, Tensor]:
    """Attack, verify and score one cell: (the cell, (N,) bool examples correct clean and after the verified
    attack). Under torch.distributed each rank takes a contiguous run of batches; every rank gets the whole mask.
    """
    n = len(y)
    start, stop = dist.shard_range(n, attack.batch_size)
    shared = threat.scope is Scope.SHARED
    if n == 0:
        raise ValueError("no examples to attack")
    if shared and n < dist.world_size():  # every rank checks: all stop together
        raise ValueError(f"{n} examples cannot be split over {dist.world_size()} processes (one per rank needed)")
    xs, ys = x[start:stop], y[start:stop]
    if start < stop:
        result = attack(model, xs, ys, threat, progress=tick, first_index=start, sync_ranks=shared)
        check = verify(model, xs, ys, result)
        correct, attack_correct = check.correct, result.logits.argmax(dim=1) == ys
        status = torch.tensor([float(not check.passed), check.max_logit_gap], dtype=torch.float64)
        problems, paths = check.problems, result.paths
    else:
        correct = attack_correct = torch.zeros(0, dtype=torch.bool)
        status, problems, paths = torch.zeros(2, dtype=torch.float64), [], {}
    correct = dist.gather_cat(correct, start, n)
    attack_correct = dist.gather_cat(attack_correct, start, n)
    dist.all_reduce_max_(status)
    passed = status[0] == 0
    robust = clean_correct & correct
    cell = Cell(
        accuracy=float(robust.float().mean()) if passed else None,
        attack_accuracy=float(attack_correct.float().mean()),
        verified=bool(passed),
        max_logit_gap=float(status[1]),
        seconds=0.0,
        threat=threat.describe(),
        paths=paths,
        problems=problems if passed or problems else ["another rank's perturbation failed verification"],
    )
    return cell, robust


def evaluate_robustness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    attack: PGD,
    progress: EvalProgress | None = None,
) -> RobustnessReport:
    """Attack and verify every (kind, scope) cell of `threat`.

    Args:
        model: classifier in the data's scale; run in eval mode, its mode restored.
        x: (N, *input_shape) clean inputs in threat.domain.
        y: (N,) labels.
        threat: the joint threat; its scope is ignored (both are evaluated).
        attack: the attack configuration used for every cell.
        progress: progress(label, done, total) during each attack.

    Under torch.distributed (torchrun) each rank attacks a contiguous run of whole batches and the results
    are gathered on every rank; with the same seed they equal a single-process run's.
    """
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean_correct = model(x).argmax(dim=1) == y
    finally:
        model.train(was_training)
    cells: dict[str, dict[str, Cell | None]] = {}
    for kind, base in threats_for(threat).items():
        cells[kind] = {}
        for scope in SCOPES:
            if base is None:
                cells[kind][scope] = None
                continue
            if kind == "input" and scope == Scope.SHARED.value:
                # No weights move, so the scope changes nothing: the same attack, reported once.
                cells[kind][scope] = Cell(**{**asdict(cells[kind][Scope.PER_EXAMPLE.value]), "same_as": "per-example"})
                continue
            cell_threat = base.with_scope(scope)
            label = f"{kind}-only {scope}" if kind != "joint" else f"joint {scope}"

            def tick(done: int, total: int, label: str = label) -> None:
                if progress is not None:
                    progress(label, done, total)

            t0 = time.perf_counter()
            cells[kind][scope] = attack_cell(model, x, y, cell_threat, attack, clean_correct, tick)[0]
            cells[kind][scope].seconds = time.perf_counter() - t0
    return RobustnessReport(
        clean_accuracy=float(clean_correct.float().mean()),
        n_examples=len(y),
        threat=threat.describe(),
        attack=repr(attack),
        cells=cells,
        seconds=time.perf_counter() - start,
        versions=_versions(),
    )
