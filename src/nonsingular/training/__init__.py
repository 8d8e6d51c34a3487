"""Robust training: objectives (THEORY.md section 6), one trainer, and its configuration.

Owns the objectives and their registry (composable by name with `+`), the one trainer, its config, logs,
resumable state and data-parallel runs. May import the vocabulary, `runtime`, `datasets`, `models`, `attacks`
and `bounds` (certified-training objectives); the study and the CLI sit above it.

```python
from nonsingular.training import TrainConfig, Trainer, RunPaths
result = Trainer(TrainConfig(objective="joint-at", epochs=10), RunPaths("runs/joint.safetensors")).fit()
```
"""

from .config import LRSchedule, OptimizerName, TrainConfig, load_config_file, resolve_config
from .logs import MetricsLog, RunPaths
from .objectives import (
    Adversarial,
    BoundRegularized,
    IBPCertified,
    Standard,
    Trades,
    build_objective,
    training_threat,
)
from .registry import (
    Objective,
    ObjectiveSpec,
    Role,
    StepContext,
    objective_names,
    objective_spec,
    parse_objective,
    register_objective,
    unregister_objective,
)
from .trainer import Trainer, TrainEvent, TrainResult, architecture_spec, learning_rate, warmup_scale

__all__ = [
    "Adversarial",
    "BoundRegularized",
    "IBPCertified",
    "LRSchedule",
    "MetricsLog",
    "Objective",
    "ObjectiveSpec",
    "OptimizerName",
    "Role",
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
    "objective_names",
    "objective_spec",
    "parse_objective",
    "register_objective",
    "resolve_config",
    "training_threat",
    "unregister_objective",
    "warmup_scale",
]
