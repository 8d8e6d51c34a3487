"""The training configuration: one validated model, read from TOML/YAML, overridden by command-line flags.

Layering (later wins): the defaults below < the saved config of the run being resumed < the --config file <
flags given on the command line. Unknown keys are errors, so a typo never silently trains something else.
The resolved config is saved next to the checkpoint (`<out>.config.yaml`), loadable again with --config.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Any

import tomllib
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..threat import EpsMode, Scope, WeightBall
from .registry import canonical_name, config_default, objective_names, objective_spec, parse_objective

__all__ = ["LRSchedule", "OptimizerName", "TrainConfig", "load_config_file", "resolve_config"]


class OptimizerName(str, Enum):
    ADAM = "adam"
    SGD = "sgd"


class LRSchedule(str, Enum):
    """constant; cosine (to 0 at the last step); step (x0.1 at 50% and 75% of the epochs)."""

    CONSTANT = "constant"
    COSINE = "cosine"
    STEP = "step"


class TrainConfig(BaseModel):
    """Everything that determines a training run. Epsilons are in the data's scale ([0, 1] inputs).

    Attributes:
        data: data source string for `load_data`, e.g. "digits" or "mnist:/data/mnist".
        data_seed: seed of the train/test split and of the validation split carved from the training set.
        val_fraction: fraction of the training set held out for the per-epoch metrics (0: use the test split).
        n_train: use only the first n training examples (after the validation split); None: all.
        architecture: "mlp", "cnn" or "lenet" (models.ARCHITECTURES).
        widths: hidden widths of the MLP.
        arch_options: further keyword arguments of the architecture (e.g. {"channels": [16, 32]} for cnn).
        objective: a registered objective name, or names joined by "+" (e.g. "pgd-at+awp", "joint-at+bound-reg");
            see `registry.parse_objective`.
        eps_x: training input radius (l_inf, data units).
        eps_w: training weight radius; None takes the objective's default (0.002 absolute; awp: 0.005 relative).
        weight_ball: element-wise or operator weight ball of the training threat.
        weight_mode: absolute or relative radius; None takes the objective's default (awp: relative).
        scope: joint-at's weight perturbation: per-example (Lemma 1) or shared per batch.
        attack_steps: inner-maximisation steps of the adversarial objectives.
        trades_beta: weight of the TRADES KL term.
        lambda_x, lambda_w: weights of Theorem 2's input and weight sensitivity terms (bound-reg).
        log_domain: bound-reg penalises log R_x and log R_w instead of R_x and R_w.
        margin_hinge: bound-reg penalises Theorem 2's margin bound 2 (R_x + R_w) only on examples where it
            exceeds the clean logit margin, by how much (a hinge; not with log_domain).
        ibp_kappa: ibp-certified loss = kappa CE(clean) + (1 - kappa) CE(IBP worst case), kappa after warm-up.
        warmup_epochs: training epsilons ramp linearly from 0 over this many epochs (per step); None: half the
            epochs for ibp-certified (interval bounds of an untrained network are too loose to train on), else 0.
        epochs, batch_size, lr, optimizer, momentum, weight_decay, lr_schedule: optimisation.
        seed: initialisation, shuffling and attack random starts (each epoch reseeded from (seed, epoch)).
        eval_eps_x, eval_eps_w, eval_steps: the per-example joint threat (absolute, element-wise) and PGD steps
            of the per-epoch robust accuracy on the held-out split; eval_steps 0 skips it.
        tensorboard: also log to TensorBoard (`<out>.tb/`) when it is installed.
        device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str = "digits"
    data_seed: int = Field(0, ge=0, lt=2**32)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    n_train: int | None = Field(None, ge=1)

    architecture: str = "mlp"
    widths: list[int] = Field(default_factory=lambda: [256, 256])
    arch_options: dict[str, Any] = Field(default_factory=dict)

    objective: str = "standard"
    eps_x: float = 0.05
    eps_w: float | None = None
    weight_ball: WeightBall = WeightBall.ELEMENTWISE
    weight_mode: EpsMode | None = None
    scope: Scope = Scope.PER_EXAMPLE
    attack_steps: int = Field(7, ge=1)
    trades_beta: float = 6.0
    lambda_x: float = 0.01
    lambda_w: float = 0.01
    log_domain: bool = False
    margin_hinge: bool = False
    ibp_kappa: float = Field(0.5, ge=0.0, le=1.0)
    warmup_epochs: int | None = Field(None, ge=0)

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: OptimizerName = OptimizerName.ADAM
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    lr_schedule: LRSchedule = LRSchedule.CONSTANT
    seed: int = 0

    eval_eps_x: float = 0.05
    eval_eps_w: float = 0.002
    eval_steps: int = Field(10, ge=0)

    tensorboard: bool = False
    device: str = "auto"

    @field_validator("eps_x", "eps_w", "trades_beta", "lambda_x", "lambda_w", "eval_eps_x", "eval_eps_w")
    @classmethod
    def _non_negative(cls, value: float | None, info: Any) -> float | None:
        if value is not None and (math.isnan(value) or math.isinf(value) or value < 0):
            raise ValueError(f"{info.field_name} must be a finite number >= 0, got {value}")
        return value

    @field_validator("widths")
    @classmethod
    def _widths(cls, value: list[int]) -> list[int]:
        if not value or any(w < 1 for w in value):
            raise ValueError(f"widths must be positive integers, got {value}")
        return value

    @field_validator("objective")
    @classmethod
    def _objective(cls, value: str) -> str:
        return canonical_name(parse_objective(value))

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.eps_x > 1 or self.eval_eps_x > 1:
            raise ValueError(f"eps_x and eval_eps_x must be <= 1 (the width of [0, 1]), got {self.eps_x}")
        if self.scope is Scope.SHARED and not any(p.honours_scope for p in parse_objective(self.objective)):
            scoped = ", ".join(n for n in objective_names() if objective_spec(n).honours_scope)
            raise ValueError(
                f"scope='shared' applies to {scoped} only (awp is always shared per batch); {self.objective} "
                "would ignore it"
            )
        if self.margin_hinge and self.log_domain:
            raise ValueError("margin_hinge compares the bound with the margin in logit units: not with log_domain")
        if self.warmup_epochs is not None and self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        return self

    @property
    def warmup(self) -> int:
        """Epochs of epsilon warm-up, with the objective's default when `warmup_epochs` is None."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return int(config_default(parse_objective(self.objective), "warmup_epochs", self))


def load_config_file(path: Path) -> dict[str, Any]:
    """The raw key/value table of a .toml, .yaml or .yml file (validated later, with the flags merged in).

    Raises:
        ValueError: unreadable file, unknown suffix, or a syntax error (the message names the file).
    """
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ValueError(f"config {path} must be a .toml, .yaml or .yml file")
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read config {path}: {err.strerror or err}") from None
    try:
        raw = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        kind = "TOML" if suffix == ".toml" else "YAML"
        raise ValueError(f"{path} is not valid {kind}: {' '.join(str(err).split())}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"config {path} must hold a table of keys, got {type(raw).__name__}")
    return raw


def resolve_config(*layers: dict[str, Any] | None) -> TrainConfig:
    """Merge key/value layers (later wins; None values mean 'not given') into a validated TrainConfig.

    Raises:
        ValueError: an unknown key (named in the message).
        pydantic.ValidationError: an invalid value; `errors.describe` names the field.
    """
    merged: dict[str, Any] = {}
    known = set(TrainConfig.model_fields)
    for layer in layers:
        unknown = sorted(set(layer or {}) - known)
        if unknown:
            raise ValueError(f"unknown config key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        merged.update({k: v for k, v in (layer or {}).items() if v is not None})
    return TrainConfig(**merged)
