"""The one trainer: any objective, SGD/Adam, learning-rate and epsilon warm-up schedules, per-epoch metrics,
and an atomic, resumable checkpoint after every epoch.

    trainer = Trainer(TrainConfig(objective="joint-at"), RunPaths("runs/joint.safetensors"))
    result = trainer.fit()

Determinism: every epoch reseeds its shuffling, the global RNG and each step's attack random start from
(seed, epoch, step), so a run resumed from the checkpoint of epoch k continues exactly as the uninterrupted
run did (same weights, bit for bit, on the same machine and thread count).

Under torchrun (after `distributed.init_from_env`) the trainer is data-parallel: every rank draws the same
shuffle, trains on its share of each global batch through DistributedDataParallel, and rank 0 alone writes the
checkpoint, the logs and the resolved config (the others wait at a barrier after each save). See
docs/distributed.md for what matches a 1-process run exactly.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from ..attacks import PGD
from ..datasets import Dataset, canonical_source, load_data
from ..models import build_model
from ..models.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from ..runtime import distributed as dist
from ..runtime import resolve_device
from ..runtime.signals import check_stop
from ..threat import ThreatModel
from . import parallel
from .config import LRSchedule, OptimizerName, TrainConfig
from .logs import MetricsLog, RunPaths
from .objectives import build_objective, trained_threat
from .registry import StepContext
from .state import derive_seed, optimizer_from_tensors, optimizer_to_tensors

__all__ = ["TrainEvent", "TrainResult", "Trainer", "architecture_spec", "learning_rate", "warmup_scale"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainEvent:
    """Progress report to the caller's callback.

    Attributes:
        kind: "batch" after every optimiser step, "epoch" after every finished (and saved) epoch.
        epoch: 1-based epoch; epochs: the total.
        step: 1-based batch within the epoch; steps: batches per epoch.
        metrics: the epoch's metrics (kind "epoch" only).
    """

    kind: str
    epoch: int
    epochs: int
    step: int
    steps: int
    metrics: dict[str, Any] | None = None


TrainCallback = Callable[[TrainEvent], None]


@dataclass
class TrainResult:
    """The trained model (eval mode), the checkpoint metadata, and one metrics dict per epoch."""

    model: nn.Module
    metadata: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- schedules
def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Learning rate at optimiser step `step` of `total` (stateless, so resuming needs no scheduler state)."""
    frac = step / max(total, 1)
    if config.lr_schedule is LRSchedule.COSINE:
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    if config.lr_schedule is LRSchedule.STEP:
        return config.lr * 0.1 ** ((frac >= 0.5) + (frac >= 0.75))
    return config.lr


def warmup_scale(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Epsilon warm-up factor: linear from 1/(warm-up steps) to 1 over `warmup_epochs`, then 1."""
    if config.warmup == 0:
        return 1.0
    return min(1.0, (step + 1) / (config.warmup * steps_per_epoch))


# ---------------------------------------------------------------------------------------------- pieces
def architecture_spec(config: TrainConfig, data: Dataset) -> dict[str, Any]:
    """The spec `build_model` takes, with the data's shape, classes and normalisation statistics."""
    spec: dict[str, Any] = {
        "name": config.architecture,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "mean": list(data.mean),
        "std": list(data.std),
        **config.arch_options,
    }
    if config.architecture == "mlp":
        spec["widths"] = list(config.widths)
    return spec


def _split(data: Dataset, config: TrainConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_val, y_val): a seeded validation split carved from the training set.

    val_fraction = 0 validates on the test split instead (say so in the metrics: "val_split": "test").
    """
    n = len(data.y_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.data_seed))
    n_val = round(config.val_fraction * n)
    if config.val_fraction > 0 and not 0 < n_val < n:
        raise ValueError(f"val_fraction={config.val_fraction} leaves no validation or no training examples")
    val, train = perm[:n_val], perm[n_val:]
    if config.n_train is not None:
        train = train[: config.n_train]
    if n_val == 0:
        return data.x_train[train], data.y_train[train], data.x_test, data.y_test
    return data.x_train[train], data.y_train[train], data.x_train[val], data.y_train[val]


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity; a diverged number is logged as null."""
    return value if math.isfinite(value) else None


def _describe_difference(saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    keys = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    return "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {wanted.get(k)!r} configured" for k in keys)


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Trains a model from a TrainConfig, saving a resumable checkpoint after every epoch.

    Args:
        config: the validated configuration.
        paths: where the checkpoint, resolved config and logs go; None keeps everything in memory.
        data: an already loaded dataset (must be what `load_data(config.data, config.data_seed)` gives).
        callback: called with a TrainEvent after every batch and every epoch (the CLI's progress bar).

    Raises:
        ValueError: unknown data source, objective or architecture, or a split that leaves nothing to train on.
    """

    def __init__(
        self,
        config: TrainConfig,
        paths: RunPaths | None = None,
        data: Dataset | None = None,
        callback: TrainCallback | None = None,
    ) -> None:
        # The data path as an absolute one: the checkpoint (and a resumed run) then names the same files from any
        # working folder.
        config = config.model_copy(update={"data": canonical_source(config.data)})
        self.config = config
        self.paths = paths
        self.callback = callback
        self.device = resolve_device(config.device)
        self.data = data if data is not None else load_data(config.data, config.data_seed)
        x_tr, y_tr, x_val, y_val = _split(self.data, config)
        self.x_train, self.y_train = x_tr.to(self.device), y_tr.to(self.device)
        self.x_val, self.y_val = x_val.to(self.device), y_val.to(self.device)
        self.spec = architecture_spec(config, self.data)
        self.objective = build_objective(config)
        torch.manual_seed(derive_seed(config.seed, 0xC0FFEE))  # initialisation depends on the seed only
        self.model = build_model(self.spec).to(self.device)
        self.optimizer = self._make_optimizer()
        #: The per-epoch robust accuracy's threat: per-example joint, absolute element-wise.
        self.eval_threat = ThreatModel(eps_x=config.eval_eps_x, eps_w=config.eval_eps_w)
        self.metrics: list[dict[str, Any]] = []
        self.epochs_done = 0
        self.seconds = 0.0

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = self.model.parameters()
        if c.optimizer is OptimizerName.SGD:
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.y_train) / self.config.batch_size)

    # ------------------------------------------------------------------------------------------ resume
    def resume(self, path: Path | None = None) -> None:
        """Continue from the last complete epoch saved at `path` (default: this run's checkpoint).

        Raises:
            CheckpointError: unreadable checkpoint, one without training state, or one of another
                architecture or data split than the config describes.
        """
        path = path if path is not None else (self.paths.checkpoint if self.paths else None)
        if path is None:
            raise ValueError("resume needs a checkpoint path")
        ckpt = load_checkpoint(path)
        meta = ckpt.metadata
        training = meta.get("training")
        if not isinstance(training, dict) or "epochs_done" not in training:
            raise CheckpointError(f"{path} holds no training state (not written by nonsingular train); cannot resume")
        keys = ["source", "seed", "n_train", "n_val"] + (
            ["fingerprint"] if "fingerprint" in meta.get("data", {}) else []
        )
        data = {k: meta.get("data", {}).get(k) for k in keys}
        data["source"] = canonical_source(str(data["source"])) if data["source"] is not None else None
        wanted = {k: self._data_description()[k] for k in data}
        if data != wanted:
            raise CheckpointError(f"cannot resume {path}: other data ({_describe_difference(data, wanted)})")
        saved_optimizer = training.get("hyperparameters", {}).get("optimizer", self.config.optimizer.value)
        if saved_optimizer != self.config.optimizer.value:
            raise CheckpointError(
                f"cannot resume {path}: it was trained with optimizer {saved_optimizer}, and "
                f"{self.config.optimizer.value} cannot continue its state; keep it, or start afresh with --force"
            )
        if meta.get("architecture") != self.spec:
            diff = _describe_difference(meta.get("architecture", {}), self.spec)
            raise CheckpointError(f"cannot resume {path}: another architecture ({diff})")
        if training["epochs_done"] > self.config.epochs:
            raise CheckpointError(
                f"cannot resume {path}: it has {training['epochs_done']} epochs, more than epochs={self.config.epochs}"
            )
        self.model.load_state_dict(ckpt.model.state_dict())
        try:
            optimizer_from_tensors(self.optimizer, ckpt.tensors, training.get("optimizer_state", {}))
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise CheckpointError(f"cannot resume {path}: its optimizer state does not fit ({err!r})") from None
        self.metrics = list(meta.get("metrics", []))
        self.epochs_done = int(training["epochs_done"])
        self.seconds = float(training.get("seconds", 0.0))
        log.info("resuming %s after epoch %d of %d", path, self.epochs_done, self.config.epochs)

    # ------------------------------------------------------------------------------------------ training
    def fit(self) -> TrainResult:
        """Train the remaining epochs; returns the model in eval mode and the final metadata.

        Raises:
            ValueError: distributed, with a batch that has fewer examples than there are processes.
            FloatingPointError: the loss became NaN or infinite (on any rank); the last checkpoint is kept.
        """
        parallel.check_batches(len(self.y_train), self.config.batch_size)
        lead = dist.rank() == 0
        logs = None
        if self.paths is not None and lead:
            # The checkpoint is the run's state and goes first: a new run replaces the old one's checkpoint before
            # anything else (an epoch-0 checkpoint), so that the checkpoint, the config and the logs written next
            # always describe one run, and a run killed in its first epoch can be resumed (from the start).
            if self.epochs_done == 0:
                self._save(self.paths.checkpoint)
            text = yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False)
            atomic_write(self.paths.config, lambda tmp: Path(tmp).write_text(text))
            logs = MetricsLog(self.paths, tensorboard=self.config.tensorboard)
            logs.resume_from(self.epochs_done)
            logs.write(self.metrics)
        # Built here, not in __init__, so that `resume` has loaded the weights DDP broadcasts from rank 0.
        train_model = parallel.wrap(self.model, self.device)
        try:
            for epoch in range(self.epochs_done, self.config.epochs):
                started = time.perf_counter()
                row = self._train_epoch(epoch, train_model)
                train_seconds = time.perf_counter() - started
                row.update(self._validate(epoch))
                row["seconds"] = train_seconds
                row["eval_seconds"] = time.perf_counter() - started - train_seconds
                self.seconds += train_seconds
                self.metrics.append({k: _finite(v) if isinstance(v, float) else v for k, v in row.items()})
                self.epochs_done = epoch + 1
                if self.paths is not None:
                    if lead:
                        self._save(self.paths.checkpoint)
                    dist.barrier()  # no rank reports an epoch (or returns) before its checkpoint exists
                if logs is not None:
                    logs.write(self.metrics)
                log.info("epoch %d/%d %s", epoch + 1, self.config.epochs, self.metrics[-1])
                self._emit(
                    TrainEvent("epoch", epoch + 1, self.config.epochs, 0, self.steps_per_epoch, self.metrics[-1])
                )
        finally:
            if logs is not None:
                logs.close()
            if train_model is not self.model:
                # The DDP wrapper is a reference cycle that holds the process group: collected now, not whenever
                # the collector next runs (possibly in interpreter finalization, where freeing it aborts).
                del train_model
                gc.collect()
        self.model.eval()
        return TrainResult(self.model, self.metadata(), self.metrics)

    def _emit(self, event: TrainEvent) -> None:
        if self.callback is not None:
            self.callback(event)

    def _train_epoch(self, epoch: int, train_model: nn.Module | None = None) -> dict[str, Any]:
        """One epoch; `train_model` is the module the loss goes through (the DDP wrapper when distributed)."""
        c = self.config
        train_model = train_model if train_model is not None else self.model
        steps = self.steps_per_epoch
        total_steps = steps * c.epochs
        torch.manual_seed(derive_seed(c.seed, epoch, 1))  # any global-RNG use (e.g. dropout) is per-epoch seeded
        perm = torch.randperm(len(self.y_train), generator=torch.Generator().manual_seed(derive_seed(c.seed, epoch, 0)))
        sums: dict[str, float] = {}
        n_seen = n_correct = 0
        scale = 1.0
        for b in range(steps):
            check_stop()  # SIGINT/SIGTERM: stop between batches; the last finished epoch's checkpoint is kept
            batch = perm[b * c.batch_size : (b + 1) * c.batch_size]
            idx, first = parallel.batch_share(batch)
            idx = idx.to(self.device)
            x, y = self.x_train[idx], self.y_train[idx]
            global_step = epoch * steps + b
            lr = learning_rate(c, global_step, total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            scale = warmup_scale(c, global_step, steps)
            train_model.train()
            ctx = StepContext(scale=scale, seed=derive_seed(c.seed, epoch, 2, b), first_index=first, n_batch=len(batch))
            out = self.objective(train_model, x, y, ctx)
            # Every rank must stop together: one that went on into backward would wait for the others' gradients.
            if parallel.any_rank(not torch.isfinite(out["loss"].detach()), self.device):
                # Stop with the last good checkpoint intact rather than train on (and save) NaN weights.
                raise FloatingPointError(
                    f"the {c.objective} loss became {float(out['loss'].detach())} at epoch {epoch + 1}, step {b + 1}; "
                    "lower --lr or the lambdas, or add --warmup-epochs"
                )
            self.optimizer.zero_grad(set_to_none=True)
            parallel.global_mean(out["loss"], len(y), len(batch)).backward()
            self.optimizer.step()
            n = len(y)
            n_seen += n
            n_correct += int((out["logits"].detach().argmax(dim=1) == y).sum())
            for key, value in out.items():
                if key != "logits":
                    sums[key] = sums.get(key, 0.0) + float(value.detach()) * n
            self._emit(TrainEvent("batch", epoch + 1, c.epochs, b + 1, steps))
        totals = parallel.sum_over_ranks({**sums, "#seen": n_seen, "#correct": n_correct}, self.device)
        n_seen, n_correct = int(totals.pop("#seen")), int(totals.pop("#correct"))
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({f"train_{k}": v / n_seen for k, v in totals.items()})
        row["train_acc"] = n_correct / n_seen
        row["lr"] = learning_rate(c, (epoch + 1) * steps - 1, total_steps)
        row["eps_scale"] = scale
        return row

    def _validate(self, epoch: int) -> dict[str, Any]:
        """Clean and per-example joint robust accuracy (PGD, the attack's own logits) on the held-out split.

        Distributed, each rank takes a contiguous run of the attack's batches (seeded by their global index) and
        the per-example results are gathered, so every rank gets the numbers a single process gets.
        """
        c = self.config
        self.model.eval()
        attack = PGD(steps=c.eval_steps, seed=derive_seed(c.seed, epoch, 3)) if c.eval_steps > 0 else None
        n = len(self.y_val)
        start, stop = dist.shard_range(n, attack.batch_size if attack is not None else n)
        x, y = self.x_val[start:stop], self.y_val[start:stop]
        with torch.no_grad():
            clean = self.model(x).argmax(dim=1) == y
        row: dict[str, Any] = {"val_clean_acc": float(dist.gather_cat(clean, start, n).float().mean())}
        if attack is not None and (c.eval_eps_x > 0 or c.eval_eps_w > 0):
            robust = clean  # an empty share stays empty
            if start < stop:
                result = attack(self.model, x, y, self.eval_threat, first_index=start)
                robust = (result.logits.argmax(dim=1) == y) & clean
            row["val_robust_acc"] = float(dist.gather_cat(robust, start, n).float().mean())
        return row

    # ------------------------------------------------------------------------------------------ checkpoint
    def _data_description(self) -> dict[str, Any]:
        return {
            "source": self.config.data,
            "seed": self.config.data_seed,
            "n_train": len(self.y_train),
            "n_val": len(self.y_val) if self.config.val_fraction > 0 else 0,
            "n_test": len(self.data.y_test),
            "val_fraction": self.config.val_fraction,
            **{k: v for k, v in self.data.describe().items() if k not in ("n_train", "n_test")},
        }

    def metadata(self) -> dict[str, Any]:
        """Checkpoint metadata: architecture, data, threat, training (config, seed, progress), metrics."""
        _, scalars = optimizer_to_tensors(self.optimizer)
        return {
            "architecture": self.spec,
            "data": self._data_description(),
            "threat": trained_threat(self.objective),
            "training": {
                "objective": self.config.objective,
                "objective_details": self.objective.describe(),
                "seed": self.config.seed,
                "epochs": self.config.epochs,
                "epochs_done": self.epochs_done,
                "complete": self.epochs_done >= self.config.epochs,
                "seconds": self.seconds,
                "hyperparameters": self.config.model_dump(mode="json"),
                "optimizer_state": scalars,
                "eval_threat": self.eval_threat.describe(),
                "eval_attack": repr(PGD(steps=self.config.eval_steps)) if self.config.eval_steps else None,
                "processes": dist.world_size(),
                "torch": torch.__version__,
            },
            "metrics": self.metrics,
        }

    def _save(self, path: Path) -> None:
        tensors, _ = optimizer_to_tensors(self.optimizer)
        save_checkpoint(path, self.model, self.metadata(), extra=tensors)
