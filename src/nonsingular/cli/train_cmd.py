"""`nonsingular train`: a thin adapter over `nonsingular.training` (config file + flags -> Trainer).

Launched with torchrun it trains data-parallel (DistributedDataParallel); rank 0 alone prints and writes.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from ..errors import describe
from ..models.checkpoint import check_output_path, read_metadata
from ..runtime import distributed as dist
from ..runtime.locks import FileLock
from ..threat import EpsMode, Scope, WeightBall
from ..training import RunPaths, TrainConfig, Trainer, TrainEvent, load_config_file, resolve_config
from ..training.config import LRSchedule, OptimizerName
from .common import UserError, console, progress_bar, resolve_device


def _default(field: str) -> str:
    """'[default: X]' read from TrainConfig, so that the help never disagrees with what is trained."""
    value = TrainConfig.model_fields[field].get_default(call_default_factory=True)
    if isinstance(value, Enum):
        value = value.value
    elif isinstance(value, bool):
        value = "yes" if value else "no"
    elif isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return f"[default: {value}]"


_OBJECTIVE_HELP = (
    "Training objective: standard, pgd-at (input AT), trades, awp (weight AT, shared per batch, relative), "
    "joint-at (inputs + weights), bound-reg (CE + lambda_x R_x + lambda_w R_w, Theorem 2), ibp-certified; "
    f"combine with '+', e.g. pgd-at+awp or joint-at+bound-reg. {_default('objective')}"
)


def _widths(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise UserError(f"--widths must be comma-separated integers, e.g. 256,256; got {text!r}") from None


def _resolve(config_file: Path | None, flags: dict[str, Any], resume_from: Path | None) -> TrainConfig:
    """defaults < the resumed run's saved config < the config file < flags given on the command line."""
    saved = None
    if resume_from is not None:
        saved = read_metadata(resume_from).get("training", {}).get("hyperparameters")
        if saved is None:
            raise UserError(f"{resume_from} holds no training state (not written by nonsingular train); cannot resume")
    file_values = load_config_file(config_file) if config_file is not None else None
    try:
        return resolve_config(saved, file_values, flags)
    except ValueError as err:
        raise UserError(f"invalid training config: {describe(err)}") from None


def _check_outputs(paths: RunPaths, force: bool, resume: bool) -> None:
    if resume:
        if not paths.checkpoint.is_file():
            raise UserError(f"--resume: no checkpoint at {paths.checkpoint} to resume from")
        return
    if paths.checkpoint.is_dir():
        raise UserError(f"{paths.checkpoint} is a directory, not a file")
    existing = [p for p in paths.files() if p.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} exists; pass --force to overwrite it (or --resume to continue the run)")
    check_output_path(paths.checkpoint)  # before the data is loaded and the first epoch trained


def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors); logs go beside it.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML or YAML file of training keys; flags override it.")
    ] = None,
    objective: Annotated[str | None, typer.Option("--objective", help=_OBJECTIVE_HELP)] = None,
    data: Annotated[
        str | None, typer.Option("--data", help=f"Data source, e.g. digits or npz:FILE. {_default('data')}")
    ] = None,
    data_seed: Annotated[
        int | None,
        typer.Option("--data-seed", help=f"Seed of the train/test and validation splits. {_default('data_seed')}"),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            "--val-fraction",
            help=f"Training fraction held out for per-epoch metrics (0 <= f < 1). {_default('val_fraction')}",
        ),
    ] = None,
    architecture: Annotated[
        str | None,
        typer.Option(
            "--architecture",
            help=f"mlp (the paper's ReLU MLP), cnn (small CNN) or lenet (LeNet-5 style). {_default('architecture')}",
        ),
    ] = None,
    widths: Annotated[
        str | None, typer.Option("--widths", help=f"MLP hidden widths, comma-separated. {_default('widths')}")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help=f"Training epochs. {_default('epochs')}")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help=f"Examples per step. {_default('batch_size')}")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help=f"Learning rate. {_default('lr')}")] = None,
    optimizer: Annotated[
        OptimizerName | None,
        typer.Option(
            "--optimizer",
            help=f"adam or sgd (momentum {TrainConfig.model_fields['momentum'].default}). {_default('optimizer')}",
        ),
    ] = None,
    lr_schedule: Annotated[
        LRSchedule | None,
        typer.Option(
            "--lr-schedule", help=f"constant, cosine, or step (x0.1 at 50% and 75%). {_default('lr_schedule')}"
        ),
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option("--weight-decay", help=f"L2 weight decay. {_default('weight_decay')}")
    ] = None,
    eps_x: Annotated[
        float | None, typer.Option("--eps-x", help=f"Training input radius, l_inf in data units. {_default('eps_x')}")
    ] = None,
    eps_w: Annotated[
        float | None,
        typer.Option(
            "--eps-w",
            help="Training weight radius (absolute weight units, or a fraction of |W| when relative). "
            "[default: 0.002 absolute; awp: 0.005 relative]",
        ),
    ] = None,
    weight_mode: Annotated[
        EpsMode | None, typer.Option("--weight-mode", help="absolute or relative. [default: absolute; awp: relative]")
    ] = None,
    weight_ball: Annotated[
        WeightBall | None, typer.Option("--weight-ball", help=f"elementwise or operator. {_default('weight_ball')}")
    ] = None,
    scope: Annotated[
        Scope | None,
        typer.Option(
            "--scope",
            help=f"joint-at weights: per-example (Lemma 1) or shared per batch (joint-at only). {_default('scope')}",
        ),
    ] = None,
    attack_steps: Annotated[
        int | None, typer.Option("--attack-steps", help=f"Inner maximisation steps. {_default('attack_steps')}")
    ] = None,
    warmup_epochs: Annotated[
        int | None,
        typer.Option(
            "--warmup-epochs",
            help="Epochs over which epsilons ramp up from 0. [default: 0; ibp-certified: half the epochs]",
        ),
    ] = None,
    lambda_x: Annotated[
        float | None,
        typer.Option("--lambda-x", help=f"bound-reg weight of R_x (input sensitivity). {_default('lambda_x')}"),
    ] = None,
    lambda_w: Annotated[
        float | None,
        typer.Option("--lambda-w", help=f"bound-reg weight of R_w (weight sensitivity). {_default('lambda_w')}"),
    ] = None,
    log_domain: Annotated[
        bool | None,
        typer.Option(
            "--log-domain/--no-log-domain", help=f"bound-reg penalises log R instead of R. {_default('log_domain')}"
        ),
    ] = None,
    margin_hinge: Annotated[
        bool | None,
        typer.Option(
            "--margin-hinge/--no-margin-hinge",
            help="bound-reg penalises Theorem 2's margin bound only where it exceeds the clean logit margin "
            f"(not with --log-domain). {_default('margin_hinge')}",
        ),
    ] = None,
    trades_beta: Annotated[
        float | None, typer.Option("--trades-beta", help=f"TRADES KL weight. {_default('trades_beta')}")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help=f"Initialisation, shuffling, attacks. {_default('seed')}")
    ] = None,
    eval_steps: Annotated[
        int | None,
        typer.Option(
            "--eval-steps", help=f"PGD steps of the per-epoch robust accuracy (0: skip). {_default('eval_steps')}"
        ),
    ] = None,
    tensorboard: Annotated[
        bool | None,
        typer.Option(
            "--tensorboard/--no-tensorboard", help=f"Also log to <out>.tb/ if installed. {_default('tensorboard')}"
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="auto (CUDA when present), cpu, cuda or cuda:N; under torchrun cuda is the GPU of LOCAL_RANK. "
            f"{_default('device')}",
        ),
    ] = None,
    threads: Annotated[int, typer.Option("--threads", help="CPU threads for torch (0: torch's default).", min=0)] = 0,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue the run at --out from its last complete epoch.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out and its logs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or per-epoch lines.")] = False,
) -> None:
    """Train a model with a standard, adversarial, bound-regularised or certified objective.

    Writes OUT (weights + metadata + resumable state, atomically after every epoch), OUT's .config.yaml (the
    resolved config) and .metrics.jsonl/.metrics.csv (clean and joint robust accuracy on a held-out split).
    """
    # Every option named after a TrainConfig field is a config flag (None: not given on the command line).
    flags = {name: value for name, value in locals().items() if name in TrainConfig.model_fields}
    flags["widths"] = _widths(widths)
    paths = RunPaths(out)
    _check_outputs(paths, force, resume)
    cfg = _resolve(config, flags, paths.checkpoint if resume else None)
    if threads:
        torch.set_num_threads(threads)
    lead = _join_process_group(cfg)
    started = time.perf_counter()
    # One run writes a checkpoint at a time: a second one refuses instead of interleaving epochs (trust).
    lock = FileLock(f"{paths.checkpoint}.lock", f"training run {paths.checkpoint}") if lead else nullcontext()
    with lock, progress_bar("training", total=None, enabled=lead and not quiet) as update:

        def on_event(event: TrainEvent) -> None:
            update(event.step, event.steps, f"epoch {event.epoch}/{event.epochs}")
            if event.kind == "epoch" and lead and not quiet and event.metrics is not None:
                m = event.metrics
                robust = m.get("val_robust_acc")
                console.print(
                    f"epoch {event.epoch:>3}/{event.epochs}  loss {m.get('train_loss') or float('nan'):.4f}  "
                    f"val clean {m['val_clean_acc']:.3f}"
                    + (f"  val joint robust {robust:.3f}" if robust is not None else "")
                    + f"  {m['seconds']:.2f}s",
                    highlight=False,
                )

        trainer = Trainer(cfg, paths, callback=on_event)  # validates data, objective and architecture
        if resume:
            trainer.resume()  # every rank loads the same checkpoint
        try:
            trainer.fit()
        except FloatingPointError as err:  # a diverged run: one line, the last good checkpoint kept
            raise UserError(str(err)) from None
    if not lead:
        return
    if dist.is_distributed():
        console.print(f"{dist.world_size()} processes, each training on a share of every batch", highlight=False)
    test = _test_accuracy(trainer)
    console.print(
        f"{cfg.objective}: {trainer.epochs_done} epochs, test accuracy {test:.4f}, "
        f"{time.perf_counter() - started:.1f}s -> {paths.checkpoint}",
        highlight=False,
    )


def _join_process_group(cfg: TrainConfig) -> bool:
    """Join torchrun's process group (if launched so) on the configured device; True on the rank that writes."""
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives (the barrier too) run on this rank's GPU
    dist.init_from_env(device)
    # Every rank has checked --out (and read a --resume checkpoint) before rank 0 writes anything there.
    dist.barrier()
    return dist.rank() == 0


def _test_accuracy(trainer: Trainer) -> float:
    model, data = trainer.model.eval(), trainer.data
    with torch.no_grad():
        pred = model(data.x_test.to(trainer.device)).argmax(dim=1).cpu()
    return float((pred == data.y_test).float().mean())
