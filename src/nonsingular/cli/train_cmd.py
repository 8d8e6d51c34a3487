"""`nonsingular train`: a thin adapter over `nonsingular.training` (config file + flags -> Trainer).

Launched with torchrun it trains data-parallel (DistributedDataParallel); rank 0 alone prints and writes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from pydantic import ValidationError

from .. import distributed as dist
from ..checkpoint import read_metadata
from ..threat import EpsMode, Scope, WeightBall
from ..training import RunPaths, TrainConfig, Trainer, TrainEvent, load_config_file, resolve_config
from ..training.config import LRSchedule, OptimizerName
from .common import UserError, console, one_line, progress_bar, resolve_device

_OBJECTIVE_HELP = (
    "Training objective: standard, pgd-at (input AT), trades, awp (weight AT, shared per batch, relative), "
    "joint-at (inputs + weights), bound-reg (CE + lambda_x R_x + lambda_w R_w, Theorem 2), ibp-certified; "
    "combine with '+', e.g. pgd-at+awp or joint-at+bound-reg. [default: standard]"
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
    except ValidationError as err:
        raise UserError(f"invalid training config: {one_line(err)}") from None


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


def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors); logs go beside it.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML or YAML file of training keys; flags override it.")
    ] = None,
    objective: Annotated[str | None, typer.Option("--objective", help=_OBJECTIVE_HELP)] = None,
    data: Annotated[str | None, typer.Option("--data", help="Data source, e.g. digits. [default: digits]")] = None,
    data_seed: Annotated[
        int | None, typer.Option("--data-seed", help="Seed of the train/test and validation splits. [default: 0]")
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option("--val-fraction", help="Training fraction held out for per-epoch metrics. [default: 0.1]"),
    ] = None,
    architecture: Annotated[
        str | None,
        typer.Option(
            "--architecture",
            help="mlp (the paper's ReLU MLP), cnn (small CNN) or lenet (LeNet-5 style). [default: mlp]",
        ),
    ] = None,
    widths: Annotated[
        str | None, typer.Option("--widths", help="MLP hidden widths, comma-separated. [default: 256,256]")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs. [default: 20]")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Examples per step. [default: 64]")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate. [default: 0.001]")] = None,
    optimizer: Annotated[
        OptimizerName | None, typer.Option("--optimizer", help="adam or sgd (momentum 0.9). [default: adam]")
    ] = None,
    lr_schedule: Annotated[
        LRSchedule | None,
        typer.Option("--lr-schedule", help="constant, cosine, or step (x0.1 at 50% and 75%). [default: constant]"),
    ] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="L2 weight decay. [default: 0]")] = None,
    eps_x: Annotated[
        float | None, typer.Option("--eps-x", help="Training input radius, l_inf in data units. [default: 0.05]")
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
        WeightBall | None, typer.Option("--weight-ball", help="elementwise or operator. [default: elementwise]")
    ] = None,
    scope: Annotated[
        Scope | None,
        typer.Option(
            "--scope", help="joint-at weights: per-example (Lemma 1) or shared per batch. [default: per-example]"
        ),
    ] = None,
    attack_steps: Annotated[
        int | None, typer.Option("--attack-steps", help="Inner maximisation steps. [default: 7]")
    ] = None,
    warmup_epochs: Annotated[
        int | None,
        typer.Option(
            "--warmup-epochs",
            help="Epochs over which epsilons ramp up from 0. [default: 0; ibp-certified: half the epochs]",
        ),
    ] = None,
    lambda_x: Annotated[
        float | None, typer.Option("--lambda-x", help="bound-reg weight of R_x (input sensitivity). [default: 0.01]")
    ] = None,
    lambda_w: Annotated[
        float | None, typer.Option("--lambda-w", help="bound-reg weight of R_w (weight sensitivity). [default: 0.01]")
    ] = None,
    log_domain: Annotated[
        bool | None,
        typer.Option("--log-domain/--no-log-domain", help="bound-reg penalises log R instead of R. [default: no]"),
    ] = None,
    trades_beta: Annotated[float | None, typer.Option("--trades-beta", help="TRADES KL weight. [default: 6]")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Initialisation, shuffling, attacks. [default: 0]")] = None,
    eval_steps: Annotated[
        int | None,
        typer.Option("--eval-steps", help="PGD steps of the per-epoch robust accuracy (0: skip). [default: 10]"),
    ] = None,
    tensorboard: Annotated[
        bool | None, typer.Option("--tensorboard/--no-tensorboard", help="Also log to <out>.tb/ if installed.")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="auto (CUDA when present), cpu, cuda or cuda:N; under torchrun cuda is the GPU of LOCAL_RANK. "
            "[default: cpu]",
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
    paths = RunPaths(out)
    _check_outputs(paths, force, resume)
    flags = {
        "objective": objective,
        "data": data,
        "data_seed": data_seed,
        "val_fraction": val_fraction,
        "architecture": architecture,
        "widths": _widths(widths),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "lr_schedule": lr_schedule,
        "weight_decay": weight_decay,
        "eps_x": eps_x,
        "eps_w": eps_w,
        "weight_mode": weight_mode,
        "weight_ball": weight_ball,
        "scope": scope,
        "attack_steps": attack_steps,
        "warmup_epochs": warmup_epochs,
        "lambda_x": lambda_x,
        "lambda_w": lambda_w,
        "log_domain": log_domain,
        "trades_beta": trades_beta,
        "seed": seed,
        "eval_steps": eval_steps,
        "tensorboard": tensorboard,
        "device": device,
    }
    cfg = _resolve(config, flags, paths.checkpoint if resume else None)
    if threads:
        torch.set_num_threads(threads)
    lead = _join_process_group(cfg)
    started = time.perf_counter()
    with progress_bar("training", total=None, enabled=lead and not quiet) as update:

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
