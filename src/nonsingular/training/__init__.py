"""Robust training: objectives (THEORY.md section 6), one trainer, and its configuration.

from nonsingular.training import TrainConfig, Trainer, RunPaths
result = Trainer(TrainConfig(objective="joint-at", epochs=10), RunPaths("runs/joint.safetensors")).fit()
"""

from .config import LRSchedule, OptimizerName, TrainConfig, load_config_file, resolve_config
from .logs import MetricsLog, RunPaths
from .objectives import (
    Adversarial,
    BoundRegularized,
    IBPCertified,
    Objective,
    ObjectiveName,
    Standard,
    StepContext,
    Trades,
    build_objective,
    parse_objective,
    training_threat,
)
from .trainer import Trainer, TrainEvent, TrainResult, architecture_spec, learning_rate, warmup_scale

__all__ = [
    "Adversarial",
    "BoundRegularized",
    "IBPCertified",
    "LRSchedule",
    "MetricsLog",
    "Objective",
    "ObjectiveName",
    "OptimizerName",
    "RunPaths",
    "Standard",
    "StepContext",
    "Trades",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "Trainer",
    "architecture_spec",
    "build_objective",
    "learning_rate",
    "load_config_file",
    "parse_objective",
    "resolve_config",
    "training_threat",
    "warmup_scale",
]
