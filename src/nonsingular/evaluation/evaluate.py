"""Robust accuracy of a model under input-only, weight-only and joint attacks, in both scopes.

Every number reported here comes from the checker: the attack's perturbation is checked against the threat
set and predictions are recomputed with the ordinary module. A cell whose perturbation fails the check reports
no accuracy (None) and says why.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from .._version import __version__
from ..attacks import Attack
from ..attacks.sanity import RandomNoise, SanityFlag, gradient_flag, nested_flag, noise_flag, train_eval_flag
from ..check import check_attack
from ..errors import NonFiniteError
from ..runtime import distributed as dist
from ..threat import Scope, ThreatModel

__all__ = [
    "KINDS",
    "NOISE_SEED",
    "SCOPES",
    "Cell",
    "CheckedAttack",
    "NoiseCheck",
    "RobustnessReport",
    "attack_and_check",
    "collect_flags",
    "evaluate_cell",
    "evaluate_robustness",
    "sanity_flags",
]

KINDS = ("input", "weight", "joint")
SCOPES = (Scope.PER_EXAMPLE.value, Scope.SHARED.value)

#: progress(label, done, total)
EvalProgress = Callable[[str, int, int], None]


@dataclass
class Cell:
    """One (kind, scope) evaluation.

    Attributes:
        accuracy: checked robust accuracy in [0, 1] (correct on the clean input and on the attack's point);
            None if the perturbation left the threat set.
        attack_accuracy: accuracy by the attack's own logits (before check).
        checked: the perturbation passed the checker.
        max_logit_gap: largest |checker - attack| logit difference.
        seconds: attack wall time.
        threat: the full threat of this cell.
        paths: layer -> path ("lemma1", "explicit", "shared").
        same_as: set when the cell is identical by definition to another (input-only in shared scope).
        robust: (N,) bool, the examples correct clean and after the checked attack (None when not kept).
    """

    accuracy: float | None
    attack_accuracy: float
    checked: bool
    max_logit_gap: float
    seconds: float
    threat: dict[str, Any]
    paths: dict[str, str]
    problems: list[str] = field(default_factory=list)
    same_as: str | None = None
    robust: Tensor | None = field(default=None, repr=False, compare=False)

    def to_json(self, examples: bool = True) -> dict[str, Any]:
        """Plain JSON; with `examples` the robust examples as {"n": N, "indices": [...]} (when known)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "robust"}
        data["threat"], data["paths"], data["problems"] = dict(self.threat), dict(self.paths), list(self.problems)
        if examples and self.robust is not None:
            data["robust_examples"] = {"n": len(self.robust), "indices": self.robust.nonzero().flatten().tolist()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cell:
        """The cell `to_json` wrote (robust examples restored as a CPU bool mask when present).

        Raises:
            ValueError: a key is missing or unknown.
        """
        data = dict(data)
        examples = data.pop("robust_examples", None)
        names = {f.name for f in fields(cls)} - {"robust"}
        if set(data) - names or {"accuracy", "checked", "threat"} - set(data):
            raise ValueError(f"not an evaluated cell: keys {sorted(data)}")
        robust = None
        if examples is not None:
            robust = torch.zeros(int(examples["n"]), dtype=torch.bool)
            robust[torch.tensor(examples["indices"], dtype=torch.long)] = True
        return cls(**data, robust=robust)


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
    attack_budget: dict[str, int] = field(default_factory=dict)
    flags: list[SanityFlag] = field(default_factory=list)

    def labelled_cells(self) -> list[tuple[str, Cell]]:
        """("joint per-example", cell), ... for every evaluated cell, in table order."""
        return [
            (f"{kind}-only {scope}" if kind != "joint" else f"joint {scope}", cell)
            for kind in KINDS
            for scope, cell in self.cells[kind].items()
            if cell is not None
        ]

    def accuracy(self, kind: str, scope: str) -> float | None:
        cell = self.cells[kind][scope]
        return None if cell is None else cell.accuracy

    def to_json(self) -> dict[str, Any]:
        data = asdict(replace(self, cells={}))
        data["cells"] = {
            kind: {scope: None if cell is None else cell.to_json(examples=False) for scope, cell in row.items()}
            for kind, row in self.cells.items()
        }
        data["schema"] = "nonsingular.evaluation/1"
        return data


def _versions() -> dict[str, str]:
    return {"nonsingular": __version__, "torch": torch.__version__, "python": platform.python_version()}


def threats_for(threat: ThreatModel) -> dict[str, ThreatModel | None]:
    """The input-only, weight-only and joint threats derived from `threat` (None where the kind is empty)."""
    derived = {"input": threat.input_only(), "weight": threat.weight_only(), "joint": threat}
    return {k: (t if t.kind == k else None) for k, t in derived.items()}


@dataclass
class CheckedAttack:
    """An attack's result on all N examples after the checker, gathered from every rank.

    Attributes:
        correct: (N,) bool, the checker's prediction (explicit weights) is the label.
        attack_correct: (N,) bool, the attack's own logits predict the label.
        logits: (N, K) the checker's logits.
        passed: every rank's perturbation lies in the threat set.
        max_logit_gap: largest |checker - attack| logit difference over all ranks.
        problems: this rank's checker findings (or a note that another rank failed).
        paths: layer -> path taken.
    """

    correct: Tensor
    attack_correct: Tensor
    logits: Tensor
    passed: bool
    max_logit_gap: float
    problems: list[str]
    paths: dict[str, str]


def attack_and_check(model, x, y, threat: ThreatModel, attack: Attack, tick=None) -> CheckedAttack:
    """Attack x, re-check the result with the checker; under torch.distributed each rank takes a contiguous
    share (random starts keyed by global example index; a shared perturbation's gradient summed over ranks)
    and every rank gets the gathered per-example results."""
    n = len(y)
    shared = threat.scope is Scope.SHARED
    if n == 0:
        raise ValueError("no examples to attack")
    if shared and n < dist.world_size():  # every rank checks: all stop together
        raise ValueError(f"{n} examples cannot be split over {dist.world_size()} processes (one per rank needed)")
    threat.check_resolvable(model)
    start, stop = dist.shard_range(n, attack.batch_size)
    xs, ys = x[start:stop], y[start:stop]
    # (failed, max logit gap, non-finite logits), max over ranks: every rank raises or goes on together.
    status = torch.zeros(3, dtype=torch.float64, device=y.device)
    if start < stop:
        result = attack(model, xs, ys, threat, progress=tick, first_index=start, sync_ranks=shared)
        check = check_attack(model, xs, ys, result)
        correct, attack_correct, logits = check.correct, result.logits.argmax(dim=1) == ys, check.logits
        finite = bool(torch.isfinite(result.logits).all() and torch.isfinite(check.logits).all())
        status[0], status[1], status[2] = float(not check.passed), check.max_logit_gap if finite else 0.0, not finite
        problems, paths = check.problems, result.paths
    else:  # more ranks than examples: this rank only joins the gathers
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        correct = attack_correct = torch.zeros(0, dtype=torch.bool, device=y.device)
        logits = torch.zeros(0, classes, dtype=x.dtype, device=y.device)
        problems, paths = [], {}
    dist.all_reduce_max_(status)
    if status[2] > 0:
        kind = "joint" if threat.kind == "joint" else f"{threat.kind}-only"
        raise NonFiniteError(
            f"the {kind} attack ({threat}) produced NaN or infinite logits: its radii overflow {x.dtype} "
            "arithmetic; use smaller epsilons"
        )
    passed = bool(status[0] == 0)
    if not passed and not problems:
        problems = ["another rank's perturbation failed the check"]
    return CheckedAttack(
        correct=dist.gather_cat(correct, start, n),
        attack_correct=dist.gather_cat(attack_correct, start, n),
        logits=dist.gather_cat(logits, start, n),
        passed=passed,
        max_logit_gap=float(status[1]),
        problems=problems,
        paths=paths,
    )


#: (inner, outer) cells whose threat sets are nested: outer contains inner, so its accuracy may not be higher.
NESTED_CELLS = (
    ("input per-example", "joint per-example"),
    ("weight per-example", "joint per-example"),
    ("weight shared", "joint shared"),
    ("input shared", "joint shared"),
    ("weight shared", "weight per-example"),
    ("joint shared", "joint per-example"),
)


#: Seed of the noise check's random points: fixed, so a flag is reproducible, in `evaluate` and in the study alike.
NOISE_SEED = 7919


@dataclass(frozen=True)
class NoiseCheck:
    """A cell the noise check re-attacks with random points: its label, threat and (N,) bool examples correct
    after the checked gradient attack."""

    label: str
    threat: ThreatModel
    robust: Tensor


def collect_flags(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    accuracy: Mapping[str, float | None],
    pairs: Sequence[tuple[str, str]],
    noise: Sequence[NoiseCheck],
    attack: Attack,
    noise_samples: int = 4,
    label: str = "model",
) -> list[SanityFlag]:
    """The sanity checks of `attacks.sanity` in one place (evaluate and the study both call this): nesting over
    `pairs` of labelled accuracies, the model's gradients and train/eval modes (named `label`), and random points
    at each cell of `noise` (`noise_samples` per example; 0 skips them), in that order.
    """
    found = [nested_flag(accuracy, pairs), gradient_flag(model, x, y, label), train_eval_flag(model, x, y, label)]
    if noise_samples > 0:
        random_points = RandomNoise(restarts=noise_samples, batch_size=attack.batch_size, seed=NOISE_SEED)
        for check in noise:
            checked = attack_and_check(model, x, y, check.threat, random_points)
            if checked.passed:
                found.append(noise_flag(check.label, check.robust, checked.correct))
    return [f for f in found if f is not None]


def sanity_flags(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cells: dict[str, dict[str, Cell | None]],
    robust: dict[str, Tensor],
    threats: dict[str, ThreatModel],
    attack: Attack,
    noise_samples: int = 4,
) -> list[SanityFlag]:
    """The sanity checks of `sanity` over evaluated cells (labels "<kind> <scope>"), see collect_flags.

    Args:
        robust: label -> (N,) bool correct after the checked attack, for the cells the noise check re-attacks.
        threats: label -> threat of those cells.
        noise_samples: random points per example for the noise check (0 skips it).
    """
    accuracy = {f"{k} {s}": (c.accuracy if c is not None else None) for k, row in cells.items() for s, c in row.items()}
    noise = [NoiseCheck(label, threats[label], mask) for label, mask in robust.items()]
    return collect_flags(model, x, y, accuracy, NESTED_CELLS, noise, attack, noise_samples)


def attack_cell(model, x, y, threat, attack, clean_correct, tick) -> tuple[Cell, Tensor]:
    """Attack, check_attack and score one cell: (the cell, (N,) bool examples correct clean and after the checked
    attack), the same on every rank under torch.distributed."""
    checked = attack_and_check(model, x, y, threat, attack, tick)
    robust = clean_correct & checked.correct
    cell = Cell(
        accuracy=float(robust.float().mean()) if checked.passed else None,
        attack_accuracy=float(checked.attack_correct.float().mean()),
        checked=checked.passed,
        max_logit_gap=checked.max_logit_gap,
        seconds=0.0,
        threat=threat.describe(),
        paths=checked.paths,
        problems=checked.problems,
    )
    return cell, robust


def evaluate_cell(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    attack: Attack,
    clean_correct: Tensor,
    tick: Callable[[int, int], None] | None = None,
    per_example: Cell | None = None,
) -> Cell:
    """Attack, check_attack and score one cell of `threat` (its scope included); the one way every caller (evaluate,
    the study) evaluates a cell.

    Args:
        model: classifier in eval mode.
        x: (N, *input_shape) clean inputs in threat.domain.
        y: (N,) labels.
        threat: the cell's threat, scope included.
        attack: the attack.
        clean_correct: (N,) bool, the model is right on the clean input.
        tick: tick(done, total) during the attack.
        per_example: the same threat's per-example cell. A shared-scope threat that moves no weight is the same
            set as the per-example one, so that cell is returned (marked same_as="per-example") unattacked.

    Returns:
        The cell, with `robust` (N,) set and `seconds` the attack's wall time.
    """
    if threat.scope is Scope.SHARED and not threat.perturbs_weights and per_example is not None:
        return replace(per_example, same_as=Scope.PER_EXAMPLE.value)
    t0 = time.perf_counter()
    cell, robust = attack_cell(model, x, y, threat, attack, clean_correct, tick)
    cell.seconds, cell.robust = time.perf_counter() - t0, robust
    return cell


def evaluate_robustness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    attack: Attack,
    progress: EvalProgress | None = None,
    noise_samples: int = 4,
) -> RobustnessReport:
    """Attack and check_attack every (kind, scope) cell of `threat`.

    Args:
        model: classifier in the data's scale; run in eval mode, its mode restored.
        x: (N, *input_shape) clean inputs in threat.domain.
        y: (N,) labels.
        threat: the joint threat; its scope is ignored (both are evaluated).
        attack: the attack configuration used for every cell.
        progress: progress(label, done, total) during each attack.
        noise_samples: random points per example of the noise sanity check on the per-example cells (0: skip).

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
    robust: dict[str, Tensor] = {}
    cell_threats: dict[str, ThreatModel] = {}
    for kind, base in threats_for(threat).items():
        cells[kind] = {}
        for scope in SCOPES:
            if base is None:
                cells[kind][scope] = None
                continue
            cell_threat = base.with_scope(scope)
            label = f"{kind}-only {scope}" if kind != "joint" else f"joint {scope}"

            def tick(done: int, total: int, label: str = label) -> None:
                if progress is not None:
                    progress(label, done, total)

            per_example = cells[kind].get(Scope.PER_EXAMPLE.value)
            cell = evaluate_cell(model, x, y, cell_threat, attack, clean_correct, tick, per_example)
            cells[kind][scope] = cell
            if scope == Scope.PER_EXAMPLE.value and cell.checked and cell.robust is not None:
                robust[f"{kind} {scope}"], cell_threats[f"{kind} {scope}"] = cell.robust, cell_threat
    flags = sanity_flags(model, x, y, cells, robust, cell_threats, attack, noise_samples)
    return RobustnessReport(
        clean_accuracy=float(clean_correct.float().mean()),
        n_examples=len(y),
        threat=threat.describe(),
        attack=repr(attack),
        cells=cells,
        seconds=time.perf_counter() - start,
        versions=_versions(),
        attack_budget=attack.budget(),
        flags=flags,
    )
