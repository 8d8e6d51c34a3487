"""Projected sign-gradient attacks on inputs, weights, or both, in per-example or shared scope.

One loop (`PGD._optimise`) serves every variant: what is perturbed and how comes from the threat model
(input box, and one `WeightBlock` per perturbed layer on the path `layer_paths` chose); what is ascended is the
attack's loss (`losses.AttackLoss`, by name: ce, margin, kl-clean, dlr, or any registered one); how the step size
evolves is the attack's `StepSchedule` (PGD: constant; APGD in `apgd.py`: halving at checkpoints, momentum,
restarts from the best point). An attack object is configuration only; the model, data and threat are given at
call time:

    result = PGD(steps=20)(model, x, y, threat)
    result.x_adv, result.perturbed_weights(0, 10)

Evaluation, certification, radii and the study depend on the `Attack` protocol, not on PGD.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime.distributed import all_reduce_sum_
from ..threat import Scope, ThreatModel
from . import fused_mlp
from .fused_mlp import FusedMLP
from .losses import AttackLoss, Loss, resolve_loss
from .perturbation import LayerPath, WeightBlock, build_weight_blocks, layer_paths
from .pgd_steps import Kept, Seeds, ascend, block_state, keep_rows, load_rows, load_state, step_input, value_and_grad
from .protocol import Progress, StepSchedule
from .result import AttackResult, _Chunk

__all__ = ["FGSM", "PGD"]

_Found = tuple[list[Tensor], list[Tensor], list["_Chunk"]]


@dataclass
class _Constant:
    """PGD's schedule: the same step every iteration, no momentum, no return to the best point."""

    fraction: float
    momentum: float = 0.0
    tracks_best: bool = False

    def start(self, rows: int, device: torch.device) -> None:
        pass

    def observe(self, step: int, loss: Tensor) -> tuple[Tensor | float, Tensor | None, Tensor | None]:
        return self.fraction, None, None


@dataclass(frozen=True, kw_only=True)
class PGD:
    """Projected sign-gradient ascent on the joint threat (Madry et al. with weights as extra variables).

    Args:
        steps: gradient steps per restart.
        rel_stepsize: step per iteration as a fraction of each radius (eps_x for inputs, the Lemma 1 range
            [-1, 1] or rho / e for weights). Default 2.5 / steps.
        abs_stepsize: input step in data units; overrides rel_stepsize for the input only.
        random_start: start uniformly inside the threat set instead of at the clean point.
        start_radius: the random start lies in this fraction of the threat set (1: all of it); small values
            start next to the clean point, as TRADES does where its KL gradient vanishes.
        restarts: independent runs; each example keeps its worst (per-example) or the run with the lowest
            accuracy is kept (shared).
        loss: what to ascend: a registered name ("ce", "margin", "kl-clean", "dlr") or an `AttackLoss`.
        batch_size: examples per forward pass.
        memory_budget_mb: cap on explicit per-example weight tensors (convolutions); lowers the batch size.
        seed: random-start seed.
    """

    steps: int = 20
    rel_stepsize: float | None = None
    abs_stepsize: float | None = None
    random_start: bool = True
    start_radius: float = 1.0
    restarts: int = 1
    loss: str | Loss | AttackLoss = Loss.CE
    batch_size: int = 256
    memory_budget_mb: float = 1024.0
    seed: int = 0

    def __post_init__(self) -> None:
        loss = resolve_loss(self.loss)
        object.__setattr__(self, "loss", Loss(loss.name) if loss.name in Loss._value2member_map_ else loss)
        if self.steps < 1 or self.restarts < 1 or self.batch_size < 1:
            raise ValueError(
                f"steps, restarts and batch_size must be >= 1 (got {self.steps}, {self.restarts}, {self.batch_size})"
            )
        for name in ("rel_stepsize", "abs_stepsize"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not self.memory_budget_mb > 0:
            raise ValueError(f"memory_budget_mb must be > 0, got {self.memory_budget_mb}")
        if not 0 < self.start_radius <= 1:
            raise ValueError(f"start_radius must be in (0, 1], got {self.start_radius}")

    def __repr__(self) -> str:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields = ", ".join(f"{k}={_show(v)}" for k, v in values.items())
        return f"{type(self).__name__}({fields})"

    @property
    def step_fraction(self) -> float:
        return self.rel_stepsize if self.rel_stepsize is not None else 2.5 / self.steps

    @property
    def objective(self) -> AttackLoss:
        """The loss as an AttackLoss."""
        return resolve_loss(self.loss)

    def budget(self) -> dict[str, int]:
        """Steps and restarts, and the most gradient steps one example can take (for reports)."""
        return {
            "steps": self.steps,
            "restarts": self.restarts,
            "max_gradient_steps_per_example": self.steps * self.restarts,
        }

    def schedule(self) -> StepSchedule:
        """The step-size schedule of one restart (a fresh object per call: it holds per-run state)."""
        return _Constant(self.step_fraction)

    # ------------------------------------------------------------------ entry point
    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        progress: Progress | None = None,
        *,
        first_index: int = 0,
        sync_ranks: bool = False,
        example_ids: Tensor | None = None,
    ) -> AttackResult:
        """Attack `model` on (x, y) under `threat`.

        Args:
            model: classifier returning logits; run in eval mode, its mode restored afterwards.
            x: (N, *input_shape) inputs inside threat.domain.
            y: (N,) labels.
            threat: what may be perturbed, by how much, and in which scope.
            progress: called as progress(done, total) after every gradient step on a batch.
            first_index: global index of x[0] when x is a shard of a larger set. Random starts are seeded by
                (seed, restart, global index of each batch), so sharded and single runs draw the same numbers.
            sync_ranks: shared scope under torch.distributed: sum the weight gradient and the score over all
                ranks each step, so every rank holds the same perturbation for the whole (sharded) set.
            example_ids: (N,) global index of each example when x is a subset that is not contiguous (the
                ensemble's later parts); replaces first_index for the random starts.
        """
        if example_ids is not None and len(example_ids) != len(x):
            raise ValueError(f"example_ids has {len(example_ids)} entries for {len(x)} examples")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError("no examples to attack")
        was_training = model.training
        model.eval()
        try:
            return self._run(model, x, y, threat, progress, first_index, sync_ranks, example_ids)
        finally:
            model.train(was_training)

    def _run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        progress: Progress | None,
        first_index: int,
        sync_ranks: bool,
        example_ids: Tensor | None = None,
    ) -> AttackResult:
        paths = layer_paths(model, threat, x[: min(2, len(x))])
        fused = fused_mlp.plan(model, paths, threat, x[:1])
        batch = self._batch_size(model, paths)
        spans = [(s, min(s + batch, len(x))) for s in range(0, len(x), batch)]
        seeds = Seeds(self.seed, first_index, None if example_ids is None else example_ids.cpu())
        total = len(spans) * self.restarts * self.steps
        done = [0]

        def tick() -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], total)

        # Per-example examples are independent: optimise batch by batch. Shared: all batches in one run.
        groups = [spans] if threat.scope is Scope.SHARED else [[span] for span in spans]
        x_adv, logits, chunks = [], [], []
        for group in groups:
            xa, lg, ch = self._optimise(model, x, y, group, threat, paths, seeds, tick, sync_ranks, fused)
            x_adv += xa
            logits += lg
            chunks += ch
        return AttackResult(
            x_adv=torch.cat(x_adv),
            logits=torch.cat(logits),
            threat=threat,
            attack=repr(self),
            paths={k: v.value for k, v in paths.items()},
            _chunks=chunks,
        )

    def _batch_size(self, model: nn.Module, paths: dict[str, LayerPath]) -> int:
        modules = dict(model.named_modules())
        explicit = sum(modules[n].weight.numel() for n, p in paths.items() if p is LayerPath.EXPLICIT)
        if not explicit:
            return self.batch_size
        # delta, its best copy, its gradient and the materialised W' ~ 4 copies per example (a schedule with
        # momentum and a best point keeps two more).
        copies = 4 if isinstance(self.schedule(), _Constant) else 6
        per_example = copies * explicit * next(model.parameters()).element_size()
        return max(1, min(self.batch_size, int(self.memory_budget_mb * 2**20 // per_example)))

    # ------------------------------------------------------------------ the one loop
    def _optimise(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        spans: list[tuple[int, int]],
        threat: ThreatModel,
        paths: dict[str, LayerPath],
        seeds: Seeds,
        tick: Callable[[], None],
        sync_ranks: bool,
        fused: FusedMLP | None = None,
    ) -> _Found:
        """Run restarts x steps over the batches `spans`; a shared threat's weight blocks span them all.

        Per-example scope keeps, for each example, the first point of any step of any restart where it was
        misclassified, else its highest-loss final iterate (highest-loss iterate of any step when the schedule
        tracks the best point). Shared scope keeps the step with the fewest correct examples (then the highest
        total loss). A loss that does not seek errors (kl-clean) counts no example as misclassified.
        """
        shared = threat.scope is Scope.SHARED
        objective = self.objective
        schedule = self.schedule()
        x_scale = threat.eps_x
        bounds = [threat.input_bounds(x[s:e]) for s, e in spans]
        clean = [self._clean_logits(model, x[s:e]) if objective.uses_clean else None for s, e in spans]
        kept = [Kept() for _ in spans]  # per-example scope
        best_shared: list[list[Tensor]] | None = None
        best_score = (float("inf"), float("inf"))  # shared: (n correct, -total loss), lower is stronger

        for restart in range(self.restarts):
            xs = [x[s:e].clone() for s, e in spans]
            # The attack differentiates its own variables only, never the layers' weights (see WeightBlock).
            global_blocks = build_weight_blocks(model, threat, paths, 0, False) if shared else []
            blocks = [[] if shared else build_weight_blocks(model, threat, paths, e - s, False) for s, e in spans]
            if self.random_start:
                self._random_start(spans, xs, bounds, blocks, global_blocks, seeds, restart)
            variables = [[v.requires_grad_() for blk in bl for v in blk.variables] for bl in blocks]
            global_vars = [v.requires_grad_() for blk in global_blocks for v in blk.variables]
            # The tensors one step moves (what momentum and the best point are kept for): inputs, then weights.
            inputs = xs if threat.perturbs_input else []
            moving = [*inputs, *(v for vs in variables for v in vs), *global_vars]
            schedule.start(1 if shared else spans[0][1] - spans[0][0], x.device)
            best_point: list[Tensor] | None = None
            previous: list[Tensor] | None = None

            for step in range(self.steps + 1):
                last = step == self.steps  # the last pass only evaluates the final iterate
                global_grads = [torch.zeros_like(v) for v in global_vars]
                n_correct, total_loss, candidate, row_loss, pending = 0, 0.0, [], None, []
                for b, (s, e) in enumerate(spans):
                    logits, losses, grads = value_and_grad(
                        model,
                        fused,
                        xs[b],
                        blocks[b] + global_blocks,
                        variables[b] + global_vars,
                        objective,
                        y[s:e],
                        clean[b],
                        input_grad=threat.perturbs_input,
                        need_grad=not last,
                    )
                    fooled = logits.argmax(dim=1) != y[s:e]
                    if not objective.seeks_errors:
                        fooled = torch.zeros_like(fooled)
                    if shared:
                        n_correct += int((~fooled).sum())
                        total_loss += float(losses.sum())
                        candidate.append([xs[b].detach().clone(), logits])
                    else:
                        state = [xs[b], logits, *block_state(blocks[b])]
                        kept[b].update(fooled, losses, state, final=last or schedule.tracks_best)
                        row_loss = losses
                    if last:
                        continue
                    with torch.no_grad():
                        for acc, g in zip(global_grads, grads[len(grads) - len(global_vars) :], strict=True):
                            acc.add_(g)
                    pending.append(grads[: len(grads) - len(global_vars)])
                    tick()
                if shared:
                    if sync_ranks:
                        totals = torch.tensor([float(n_correct), total_loss], dtype=torch.float64, device=x.device)
                        all_reduce_sum_([totals, *global_grads])
                        n_correct, total_loss = int(totals[0]), float(totals[1])
                    if best_shared is None or (n_correct, -total_loss) < best_score:
                        best_score = (n_correct, -total_loss)
                        best_shared = [*candidate, [v.detach().clone() for v in global_vars]]
                    row_loss = torch.tensor([total_loss], dtype=torch.float64, device=x.device)
                if last or row_loss is None:  # row_loss: set by every pass in either scope
                    break
                eta, improved, back = schedule.observe(step, row_loss)
                with torch.no_grad():
                    if improved is not None:
                        best_point = keep_rows(best_point, moving, improved, shared)
                    if back is not None and best_point is not None:
                        load_rows(moving, best_point, back, shared)
                    before = [v.detach().clone() for v in moving] if schedule.momentum else []
                    for b, grads in enumerate(pending):
                        if threat.perturbs_input:
                            lb, ub = bounds[b]
                            xs[b] = step_input(xs[b], grads.pop(0), eta, x_scale, self.abs_stepsize, lb, ub)
                        ascend(blocks[b], grads, eta)
                    ascend(global_blocks, global_grads, eta)
                    moving = [*(xs if threat.perturbs_input else []), *moving[len(inputs) :]]
                    if schedule.momentum:
                        if previous is not None:
                            if back is not None:  # no momentum out of a return to the best point
                                load_rows(previous, before, back, shared)
                            a = 1.0 - schedule.momentum
                            for v, old, prev in zip(moving, before, previous, strict=True):
                                v.copy_(old + a * (v - old) + (1 - a) * (old - prev))
                            for b, bl in enumerate(blocks):
                                if threat.perturbs_input:
                                    xs[b].copy_(torch.minimum(torch.maximum(xs[b], bounds[b][0]), bounds[b][1]))
                                for blk in bl:
                                    blk.project_()
                            for blk in global_blocks:
                                blk.project_()
                        previous = before
        best = best_shared if best_shared is not None else [k.state for k in kept]  # set in shared scope only
        return self._finish(spans, threat, model, paths, best)

    @staticmethod
    def _clean_logits(model: nn.Module, x: Tensor) -> Tensor:
        with torch.no_grad():
            logits: Tensor = model(x)
        return logits

    def _random_start(
        self,
        spans: list[tuple[int, int]],
        xs: list[Tensor],
        bounds: list[tuple[Tensor, Tensor]],
        blocks: list[list[WeightBlock]],
        global_blocks: list[WeightBlock],
        seeds: Seeds,
        restart: int,
    ) -> None:
        """Start uniformly inside `start_radius` x the threat set, keyed by global example index."""
        r = self.start_radius
        for (s, e), xb, (lb, ub), bl in zip(spans, xs, bounds, blocks, strict=True):
            uniform = seeds.rows(restart, s, e)
            point = lb + (ub - lb) * uniform(xb.shape).to(xb)
            xb.copy_(point if r == 1 else xb + r * (point - xb))
            for blk in bl:
                blk.random_start(uniform)
        generator = seeds.shared(restart)
        for blk in global_blocks:
            blk.random_start(generator)
        if r != 1:
            for blk in [b for bl in blocks for b in bl] + global_blocks:
                for v in blk.variables:
                    v.mul_(r)

    def _finish(
        self,
        spans: list[tuple[int, int]],
        threat: ThreatModel,
        model: nn.Module,
        paths: dict[str, LayerPath],
        best: list[list[Tensor]],
    ) -> _Found:
        """Load the kept state into fresh blocks: the kept inputs, logits, variables and (Lemma 1) layer inputs."""
        shared = threat.scope is Scope.SHARED
        global_blocks = build_weight_blocks(model, threat, paths, 0) if shared else []
        if shared:
            for v, kept in zip([v for blk in global_blocks for v in blk.variables], best[-1], strict=True):
                v.copy_(kept)
        x_adv, logits, chunks = [], [], []
        for b, (s, e) in enumerate(spans):
            blocks = [] if shared else build_weight_blocks(model, threat, paths, e - s)
            if not shared:
                load_state(blocks, best[b][2:])
            x_adv.append(best[b][0])
            logits.append(best[b][1])
            chunks.append(_Chunk(s, e, blocks))
        if shared:
            chunks = [_Chunk(spans[0][0], spans[-1][1], global_blocks)]
        return x_adv, logits, chunks


def _show(value: object) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, AttackLoss):
        return value.name
    return repr(value)


def FGSM(**kwargs: Any) -> PGD:
    """Fast gradient sign method: one full-size step from the clean point (PGD with other defaults)."""
    defaults: dict[str, Any] = {"steps": 1, "rel_stepsize": 1.0, "random_start": False}
    return PGD(**{**defaults, **kwargs})
