"""Certify a model under one threat: certified accuracy per bound method, the distribution of margin lower
bounds, and how tight each bound is against the strongest attack.

The tightness ratio of an example is (upper bound on its loss increase) / (largest loss increase the attack
found, checked with explicit weights): 1 is perfect, larger is looser. Certificates are lower bounds on robust
accuracy and the attack's robust accuracy an upper bound, so every certified example must survive the attack;
an example that does not is counted in `broken` and flagged in `problems` (a bug in a bound, never expected).

Bounds are computed in float64 (the model's weights are cast, not modified), and every certificate is for the
model as executed: a margin counts only if its exact-arithmetic lower bound exceeds the a-priori bound on the
floating-point error of running the model in its own dtype (bounds/rounding.py, THEORY.md section 13); the
certificates that this removes are counted in `MethodResult.removed_by_rounding`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._version import __version__
from ..attacks import Attack
from ..bounds import DEFAULT_ALPHA_STEPS, DEFAULT_MEMORY_MB, BoundMethod, execution_of, margin_bounds, norm_bounds
from ..errors import NonFiniteError
from ..runtime import distributed as dist
from ..runtime.signals import check_stop
from ..threat import ThreatModel
from .evaluate import attack_and_check

__all__ = [
    "Certificate",
    "CertifyReport",
    "ExampleBounds",
    "MethodResult",
    "Tightness",
    "certified_mask",
    "certify",
    "example_bounds",
]

logger = logging.getLogger(__name__)

#: progress(label, done, total)
Progress = Callable[[str, int, int], None]
#: Attack loss increases below this are treated as "found nothing" when forming ratios.
_MIN_INCREASE = 1e-6
_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


@dataclass
class Tightness:
    """Bound on the loss increase over the attack's loss increase, on examples where the attack found one.

    Attributes:
        n: examples with an attack loss increase above 1e-6 (the others give no ratio).
        median: median of the per-example ratios.
        of_means: mean bound / mean attack increase over those examples.
    """

    n: int
    median: float | None
    of_means: float | None


@dataclass
class MethodResult:
    """One bound method on the evaluated examples.

    Attributes:
        method: "norm", "ibp" or "crown".
        certified_accuracy: fraction of examples whose every margin lower bound is > 0 (and hence correct).
        n_certified: number of such examples.
        worst_margin: per example, the smallest margin lower bound over the wrong classes.
        margin_quantiles: quantiles ("0%", "5%", ..., "100%") of worst_margin.
        loss_bound: per example, an upper bound on the cross-entropy increase.
        tightness: loss_bound against the attack's loss increase (None without an attack).
        broken: certified examples the attack misclassified: must be 0.
        seconds: time the bound took.
        removed_by_rounding: examples certified in exact arithmetic whose margin is below the bound on the
            floating-point error of the executed model (not certified, and not in n_certified).
    """

    method: str
    certified_accuracy: float
    n_certified: int
    worst_margin: list[float]
    margin_quantiles: dict[str, float]
    loss_bound: list[float]
    tightness: Tightness | None
    broken: int
    seconds: float
    removed_by_rounding: int = 0


@dataclass
class Certificate:
    """Certified accuracy of one bound method at one threat: the summary of a MethodResult that studies keep.

    Attributes:
        threat: the threat (ThreatModel.describe()).
        method: "norm", "ibp" or "crown".
        certified_accuracy: certified examples / n_examples, in [0, 1].
        n_certified: examples whose every margin lower bound is > 0.
        n_examples: examples the accuracy is a fraction of.
        bounded_examples: examples actually bounded (the others, which a checked attack broke, count as
            uncertified: a sound bound cannot certify them).
        seconds: time the bound took.
    """

    threat: dict[str, Any]
    method: str
    certified_accuracy: float
    n_certified: int
    n_examples: int
    bounded_examples: int
    seconds: float

    @classmethod
    def of(cls, result: MethodResult, threat: ThreatModel, n_examples: int) -> Certificate:
        """The certificate of `result`, computed on a subset of `n_examples` examples (all of them if equal)."""
        return cls(
            threat=threat.describe(),
            method=result.method,
            certified_accuracy=result.n_certified / n_examples,
            n_certified=result.n_certified,
            n_examples=n_examples,
            bounded_examples=len(result.worst_margin),
            seconds=result.seconds,
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "threat": dict(self.threat)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Certificate:
        """The certificate `to_json` wrote.

        Raises:
            ValueError: a key is missing or unknown.
        """
        if set(data) != {f.name for f in fields(cls)}:
            raise ValueError(f"not a certificate: keys {sorted(data)}")
        return cls(**data)


@dataclass
class CertifyReport:
    """Certificates of one model under one threat, with the attack they are measured against.

    Attributes:
        threat: the threat (bounds are per-example; they hold for the shared scope too).
        n_examples: examples evaluated.
        clean_accuracy: unperturbed accuracy.
        attack: repr of the attack, or None when none ran.
        attacked_accuracy: checked robust accuracy under the attack (an upper bound on the truth).
        attack_loss_increase: per example, the checked loss increase the attack reached.
        methods: results by method name.
        problems: sanity flags; empty when everything is consistent.
        execution: the arithmetic the certificates hold for (e.g. "float32 (u = 2^-24)": bounds/rounding.py).
    """

    threat: ThreatModel
    n_examples: int
    clean_accuracy: float
    attack: str | None
    attacked_accuracy: float | None
    attack_loss_increase: list[float] | None
    methods: dict[str, MethodResult]
    problems: list[str] = field(default_factory=list)
    execution: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: numbers as numbers, the threat in full, versions and the bounds' dtype."""
        return {
            "threat": self.threat.describe(),
            "n_examples": self.n_examples,
            "clean_accuracy": self.clean_accuracy,
            "attack": self.attack,
            "attacked_accuracy": self.attacked_accuracy,
            "attack_loss_increase": self.attack_loss_increase,
            "methods": {name: asdict(result) for name, result in self.methods.items()},
            "certificates": [
                Certificate.of(result, self.threat, self.n_examples).to_json() for result in self.methods.values()
            ],
            "problems": list(self.problems),
            "bound_dtype": "float64",
            "execution": self.execution,
            "versions": {"nonsingular": __version__, "torch": torch.__version__},
        }


class ExampleBounds(NamedTuple):
    """One chunk's bounds, each (N,) float64.

    Attributes:
        worst: the smallest margin lower bound of the model as executed (> 0: certified).
        loss: an upper bound on the loss increase.
        worst_exact: the same margin bound in exact arithmetic (ignoring the execution's rounding).
    """

    worst: Tensor
    loss: Tensor
    worst_exact: Tensor


def example_bounds(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    method: BoundMethod | str,
    *,
    alpha_steps: int = DEFAULT_ALPHA_STEPS,
    alpha_final_only: bool = False,
    memory_mb: float = DEFAULT_MEMORY_MB,
) -> ExampleBounds:
    """(worst margin lower bound of the executed model, upper bound on the loss increase, worst exact margin
    lower bound), each (N,) float64, for one chunk of examples.

    For the norm method the loss bound is the smaller of Theorem 2's 2 E_L and the bound its margins imply.
    alpha_steps, alpha_final_only and memory_mb are passed to `margin_bounds` (alpha-CROWN's steps and which
    slopes it optimises, CROWN's chunk budget in MiB).
    """
    method = BoundMethod(method)
    x64 = x.to(torch.float64)
    with torch.no_grad():
        bounds = margin_bounds(
            model,
            x64,
            y,
            threat,
            method,
            alpha_steps=alpha_steps,
            alpha_final_only=alpha_final_only,
            memory_mb=memory_mb,
        )
        loss = bounds.loss_increase_bound()
        if method is BoundMethod.NORM:
            loss = torch.minimum(loss, norm_bounds(model, x64, threat).loss_change)
    return ExampleBounds(bounds.worst, loss, bounds.worst_exact)


def certified_mask(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    method: BoundMethod | str,
    batch_size: int = 512,
    candidates: Tensor | None = None,
) -> Tensor:
    """(N,) bool: examples whose prediction no (x', W') in the threat set can change (by `method`).

    candidates: (N,) bool, bound only these examples and report the others uncertified. Passing the examples a
    checked attack did not break saves the bound's cost without changing the result: a sound bound never
    certifies an example the attack broke (certify() runs every example and counts such breaks).

    Under torch.distributed the examples to bound are split over the ranks in whole batches and the mask is
    gathered, so every rank returns the whole mask (and every rank must call this with the same arguments).
    """
    index = torch.arange(len(y), device=y.device) if candidates is None else candidates.nonzero().flatten()
    start, stop = dist.shard_range(len(index), batch_size)
    parts = [torch.zeros(0, dtype=torch.bool, device=y.device)]
    for s in range(start, stop, batch_size):
        check_stop()  # SIGINT/SIGTERM between batches (runtime/signals.py)
        rows = index[s : min(s + batch_size, stop)]
        worst = example_bounds(model, x[rows], y[rows], threat, method).worst
        # -inf is a sound (empty) bound at a huge threat; NaN means the arithmetic broke and nothing may be read.
        if bool(worst.isnan().any()):
            raise NonFiniteError(f"the {BoundMethod(method).value} bound is NaN at {threat}; use smaller epsilons")
        parts.append((worst > 0).to(y.device))
    certified = dist.gather_cat(torch.cat(parts), start, len(index))
    mask = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    mask[index] = certified
    return mask


def _quantiles(values: Tensor) -> dict[str, float]:
    qs = torch.quantile(values.double(), torch.tensor(_QUANTILES, dtype=torch.float64, device=values.device))
    return {f"{round(100 * q):d}%": float(v) for q, v in zip(_QUANTILES, qs.tolist(), strict=True)}


def _tightness(bound: Tensor, found: Tensor) -> Tightness:
    keep = found > _MIN_INCREASE
    if not bool(keep.any()):
        return Tightness(n=0, median=None, of_means=None)
    b, f = bound[keep].double(), found[keep].double()
    return Tightness(n=int(keep.sum()), median=float((b / f).median()), of_means=float(b.mean() / f.mean()))


def _attack(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, attack: Attack, progress: Progress | None
) -> tuple[Tensor, Tensor, list[str]]:
    """(correct after the attack, checked loss increase, problems): the attack's result re-run by the checker,
    split over torch.distributed ranks as in evaluation."""
    tick = (lambda d, t: progress("attack", d, t)) if progress else None
    checked = attack_and_check(model, x, y, threat, attack, tick)
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        increase = (F.cross_entropy(checked.logits, y, reduction="none") - clean).double()
    if not bool(torch.isfinite(increase).all()):
        raise NonFiniteError(
            f"the attack's loss increase at {threat} overflowed float arithmetic; use smaller epsilons"
        )
    problems = [f"attack result failed the check: {p}" for p in checked.problems]
    return checked.correct, increase, problems


def certify(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    methods: Sequence[BoundMethod | str] = tuple(BoundMethod),
    attack: Attack | None = None,
    batch_size: int = 512,
    progress: Progress | None = None,
    *,
    alpha_steps: int = DEFAULT_ALPHA_STEPS,
    alpha_final_only: bool = False,
    memory_mb: float = DEFAULT_MEMORY_MB,
) -> CertifyReport:
    """Certified accuracy per method, margin lower bounds, and tightness against `attack`.

    Args:
        model: classifier (eval mode is used; its mode is restored).
        x: (N, *input_shape) in threat.domain.
        y: (N,) labels.
        threat: the joint threat.
        methods: bound methods to run.
        attack: the attack the bounds are measured against (its CE loss increase is the tightness reference);
            None runs no attack and reports no tightness.
        batch_size: examples per bound computation.
        progress: called as progress(label, done, total).
        alpha_steps: alpha-CROWN's gradient steps on the ReLU slopes.
        alpha_final_only: alpha-CROWN optimises only the final margins' slopes (see `margin_bounds`).
        memory_mb: CROWN's budget for one chunk's coefficient tensors, MiB.
    """
    methods = [BoundMethod(m) for m in methods]
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need matching, non-empty x and y (got {x.shape[0]} and {y.shape[0]} examples)")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean_accuracy = float((model(x).argmax(dim=1) == y).float().mean())
        problems: list[str] = []
        survived = increase = None
        if attack is not None:
            survived, increase, problems = _attack(model, x, y, threat, attack, progress)
        results = {}
        for method in methods:
            options = {"alpha_steps": alpha_steps, "alpha_final_only": alpha_final_only, "memory_mb": memory_mb}
            results[method.value] = _run_method(
                model, x, y, threat, method, batch_size, progress, survived, increase, options
            )
            if results[method.value].broken:
                msg = (
                    f"{results[method.value].broken} example(s) certified by {method.value} were broken by the "
                    "attack: a bound is unsound (please report this)"
                )
                logger.error(msg)
                problems.append(msg)
    finally:
        model.train(was_training)
    return CertifyReport(
        threat=threat,
        n_examples=len(y),
        clean_accuracy=clean_accuracy,
        attack=repr(attack) if attack is not None else None,
        attacked_accuracy=float(survived.float().mean()) if survived is not None else None,
        attack_loss_increase=increase.tolist() if increase is not None else None,
        methods=results,
        problems=problems,
        execution=execution_of(model).describe(),
    )


def _run_method(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    method: BoundMethod,
    batch_size: int,
    progress: Progress | None,
    survived: Tensor | None,
    increase: Tensor | None,
    options: dict[str, Any],
) -> MethodResult:
    t0 = time.perf_counter()
    # Under torch.distributed each rank bounds a contiguous run of whole batches; every rank gets all rows.
    start, stop = dist.shard_range(len(y), batch_size)
    worst = [torch.zeros(0, dtype=torch.float64, device=y.device)]
    loss = [torch.zeros(0, dtype=torch.float64, device=y.device)]
    exact = [torch.zeros(0, dtype=torch.float64, device=y.device)]
    spans = list(range(start, stop, batch_size))
    for i, s in enumerate(spans):
        check_stop()  # SIGINT/SIGTERM between batches (runtime/signals.py)
        e = min(s + batch_size, stop)
        part = example_bounds(model, x[s:e], y[s:e], threat, method, **options)
        worst.append(part.worst)
        loss.append(part.loss)
        exact.append(part.worst_exact)
        if progress is not None:
            progress(method.value, i + 1, len(spans))
    worst_t = dist.gather_cat(torch.cat(worst), start, len(y)).cpu()
    loss_t = dist.gather_cat(torch.cat(loss), start, len(y)).cpu()
    exact_t = dist.gather_cat(torch.cat(exact), start, len(y)).cpu()
    if not bool(torch.isfinite(worst_t).all() and torch.isfinite(loss_t).all()):
        # Every rank holds the gathered bounds, so every rank stops here together.
        raise NonFiniteError(
            f"the {method.value} bound overflowed float64 at {threat} (a margin or loss bound is NaN or infinite): "
            "the radii are too large to bound; use smaller epsilons"
        )
    certified = worst_t > 0
    broken = 0 if survived is None else int((certified & ~survived.cpu()).sum())
    return MethodResult(
        method=method.value,
        certified_accuracy=float(certified.float().mean()),
        n_certified=int(certified.sum()),
        worst_margin=worst_t.tolist(),
        margin_quantiles=_quantiles(worst_t),
        loss_bound=loss_t.tolist(),
        tightness=_tightness(loss_t, increase.cpu()) if increase is not None else None,
        broken=broken,
        seconds=time.perf_counter() - t0,
        removed_by_rounding=int(((exact_t > 0) & ~certified).sum()),
    )
