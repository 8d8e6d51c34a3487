"""The study's configuration: a validated TOML/YAML file (unknown keys are errors), with a shipped default."""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import tomllib
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..attacks import PGD, AttackKind, AutoEnsemble, Loss, make_attack
from ..bounds import BoundMethod
from ..deployment import Scheme
from ..errors import InputError, describe
from ..evaluation import RadiusSettings
from ..threat import EpsMode, Scope, WeightBall

__all__ = ["StudyConfig", "default_config_path", "load_study_config", "resolve_study", "shipped_studies"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    """One model of the comparison: an objective and its options (passed to the trainer)."""

    name: str
    objective: str = "standard"
    options: dict[str, Any] = Field(default_factory=dict)


def _eps_w_axis(values: list[float], where: str) -> list[float]:
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"{where} values must be finite and >= 0, got {values}")
    return sorted({0.0, *map(float, values)})


class Parametrization(_Strict):
    """Another weight parametrization of the grid: its ball, mode and own eps_w axis (weight units when
    absolute, a fraction of each weight or of each matrix's operator norm when relative; 0 is added). It is
    evaluated at eps_x in {0, headline eps_x}: the weight-only and joint cells the claims are judged on."""

    weight_ball: WeightBall
    weight_mode: EpsMode
    eps_w: list[float] = Field(min_length=1)

    @field_validator("eps_w")
    @classmethod
    def _axis(cls, values: list[float]) -> list[float]:
        values = _eps_w_axis(values, "grid.parametrizations eps_w")
        if len(values) < 2:
            raise ValueError("grid.parametrizations eps_w needs a value > 0")
        return values

    @property
    def label(self) -> str:
        """ "ball mode", e.g. "operator relative"."""
        return f"{self.weight_ball.value} {self.weight_mode.value}"


class GridConfig(_Strict):
    """The (eps_x, eps_w) grid; 0 is added to both axes so input-only and weight-only slices exist.
    `parametrizations` adds other (ball, mode) pairs, each with its own eps_w axis (see Parametrization)."""

    eps_x: list[float] = [0.0, 0.02, 0.05, 0.1]
    eps_w: list[float] = [0.0, 0.0005, 0.001, 0.002]
    weight_ball: WeightBall = WeightBall.ELEMENTWISE
    weight_mode: EpsMode = EpsMode.ABSOLUTE
    scopes: list[Scope] = [Scope.PER_EXAMPLE, Scope.SHARED]
    parametrizations: list[Parametrization] = []

    @field_validator("eps_x", "eps_w")
    @classmethod
    def _axis(cls, values: list[float], info: Any) -> list[float]:
        if info.field_name == "eps_x" and any(math.isfinite(v) and v > 1 for v in values):
            raise ValueError(f"grid.eps_x values must be <= 1 (the width of the data's [0, 1] domain), got {values}")
        return _eps_w_axis(values, f"grid.{info.field_name}")

    @model_validator(mode="after")
    def _distinct(self) -> GridConfig:
        labels = [f"{self.weight_ball.value} {self.weight_mode.value}"] + [p.label for p in self.parametrizations]
        if len(set(labels)) != len(labels):
            raise ValueError(
                f"grid.parametrizations: each (weight_ball, weight_mode) once, the grid's own included; got {labels}"
            )
        return self

    @property
    def label(self) -> str:
        """The main grid's parametrization, "ball mode"."""
        return f"{self.weight_ball.value} {self.weight_mode.value}"


class AttackConfig(_Strict):
    """The attack of every grid cell and of the radii: auto (APGD-CE + APGD-T ensemble) or pgd."""

    kind: AttackKind = AttackKind.AUTO
    steps: int | None = Field(None, ge=1)
    restarts: int = Field(1, ge=1)
    loss: Loss = Loss.CE
    targets: int = Field(3, ge=0)
    batch_size: int = Field(512, ge=1)
    headline_kind: AttackKind | None = None

    @model_validator(mode="after")
    def _fits_kind(self) -> AttackConfig:
        self.build()  # make_attack's one-line error for an option the kind does not take
        self.build(headline=True)
        return self

    def build(self, seed: int = 0, headline: bool = False) -> PGD | AutoEnsemble:
        """The configured attack; `headline`: the one of the headline point's cells (`headline_kind`, default
        `kind`, with the same steps, restarts, targets and batch size; the loss only applies to pgd)."""
        kind = self.headline_kind if headline and self.headline_kind is not None else self.kind
        return make_attack(
            kind,
            steps=self.steps,
            restarts=self.restarts,
            loss=self.loss if kind is AttackKind.PGD else Loss.CE,
            targets=self.targets,
            batch_size=self.batch_size,
            seed=seed,
        )


class CertifyConfig(_Strict):
    """Certificates of the main parametrization's grid: each method in `methods` at `points` ([eps_x, eps_w]
    pairs of the grid; default every point but (0, 0)) on the first `n_examples` of the study's examples
    (default all of them; certified accuracies are fractions of those). CROWN and alpha-CROWN cost seconds per
    example on a CNN, which is what the two options are for."""

    methods: list[BoundMethod] = [BoundMethod.IBP, BoundMethod.CROWN]
    n_examples: int | None = Field(None, ge=1)
    points: list[tuple[float, float]] | None = Field(None, min_length=1)


class RadiusConfig(RadiusSettings):
    """Ray (eps_x, eps_w, eps_b) = s (k_x, k_w, k_b) for the per-example radii (see radius.RadiusSettings);
    `method` bounds the certified radii (default: the last of certify.methods, else ibp); `enabled = false`
    skips them."""

    enabled: bool = True
    method: BoundMethod | None = None
    iterations: int = Field(6, ge=1, le=30)


class ScaleConfig(_Strict):
    """The scale-aware analysis (study.scale): per-layer weight norms and mean input l1 norms, the claims at the
    headline eps_x in all four weight parametrizations (eps_w of each below: a weight-only and a joint cell per
    scope), and the rescaling check (first layer x c, second / c) on the per-example weight-only cells.
    `enabled = false` skips it."""

    enabled: bool = True
    n_examples: int = Field(100, ge=1)
    factors: list[float] = [0.5, 2.0]
    elementwise_absolute: float = Field(0.002, gt=0)
    elementwise_relative: float = Field(0.05, gt=0)
    operator_absolute: float = Field(0.1, gt=0)
    operator_relative: float = Field(0.005, gt=0)

    @field_validator("factors")
    @classmethod
    def _factors(cls, values: list[float]) -> list[float]:
        if any(not math.isfinite(v) or v <= 0 or v == 1 for v in values):
            raise ValueError(f"scale.factors must be finite, > 0 and not 1, got {values}")
        return values

    def eps_w(self, ball: WeightBall, mode: EpsMode) -> float:
        """The radius of one parametrization."""
        return float(getattr(self, f"{ball.value}_{mode.value}"))


class QuantizationConfig(_Strict):
    """The optional deployment section (study.quantization): per model and seed, accuracy of its quantizations
    to integer weight grids (round-to-nearest, random and worst-case rounding) and the certified accuracy of the
    round-to-nearest box, at eps_x = 0 and `eps_x` (default: the headline eps_x). `enabled = true` runs it."""

    enabled: bool = False
    bits: list[Annotated[int, Field(ge=2, le=16)]] = Field([8, 6, 4], min_length=1)
    granularity: list[Literal["per-tensor", "per-channel"]] = Field(["per-tensor", "per-channel"], min_length=1)
    scheme: Scheme = Scheme.SYMMETRIC
    eps_x: float | None = Field(None, ge=0, le=1)
    n_examples: int = Field(100, ge=1)
    method: BoundMethod = BoundMethod.CROWN
    random_draws: int = Field(3, ge=1)

    @field_validator("bits", "granularity")
    @classmethod
    def _unique(cls, values: list[Any], info: Any) -> list[Any]:
        if len(set(values)) != len(values):
            raise ValueError(f"quantization.{info.field_name} must not repeat a value, got {values}")
        return values


class Headline(_Strict):
    eps_x: float = 0.05
    eps_w: float = 0.002


class StudyConfig(_Strict):
    """Everything a study does. Trained models are cached by the hash of what determines them."""

    name: str = "study"
    data: str = "digits"
    seed: int = Field(0, ge=0, lt=2**32)
    seeds: list[Annotated[int, Field(ge=0, lt=2**32)]] | None = Field(None, min_length=1)
    n_examples: int | None = Field(None, ge=1)
    architecture: dict[str, Any] = Field(default_factory=lambda: {"name": "mlp", "widths": [256, 256]})
    training: dict[str, Any] = Field(default_factory=dict)
    attack: AttackConfig = AttackConfig()
    grid: GridConfig = GridConfig()
    certify: CertifyConfig = CertifyConfig()
    radius: RadiusConfig = RadiusConfig()
    scale: ScaleConfig = ScaleConfig()
    quantization: QuantizationConfig = QuantizationConfig()
    headline: Headline = Headline()
    models: list[ModelEntry] = Field(default_factory=lambda: [ModelEntry(name="standard")], min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: must be unique, got {self.seeds}")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique, got {names}")
        if self.headline.eps_x not in self.grid.eps_x or self.headline.eps_w not in self.grid.eps_w:
            raise ValueError(
                f"headline: ({self.headline.eps_x}, {self.headline.eps_w}) must be a point of the grid "
                f"eps_x={self.grid.eps_x}, eps_w={self.grid.eps_w}"
            )
        for ex, ew in self.certify.points or []:
            if ex not in self.grid.eps_x or ew not in self.grid.eps_w:
                raise ValueError(
                    f"certify.points: ({ex}, {ew}) must be a point of the grid "
                    f"eps_x={self.grid.eps_x}, eps_w={self.grid.eps_w}"
                )
        return self

    @property
    def run_seeds(self) -> list[int]:
        """The seeds every model is trained and evaluated with: `seeds`, or [seed] when it is not given."""
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def model_key(self, entry: ModelEntry, data_fingerprint: str, seed: int | None = None) -> str:
        """Content hash of everything that determines a trained model (the training cache key): its settings,
        the training seed (default `seed`) and the data itself (`Dataset.fingerprint`), so replacing a data
        file's contents retrains."""
        from .._version import __version__

        payload: dict[str, Any] = {
            "entry": entry.model_dump(mode="json"),
            "architecture": self.architecture,
            "training": self.training,
            "data": self.data,
            "data_fingerprint": data_fingerprint,
            "seed": self.seed,
            "version": __version__,
        }
        if seed is not None and seed != self.seed:  # the split seed stays `seed`; keys of seed-only studies hold
            payload["train_seed"] = seed
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def default_config_path() -> Path:
    return Path(str(resources.files("nonsingular") / "configs" / "study.toml"))


def shipped_studies() -> dict[str, Path]:
    """The studies shipped with the package by name (the file name without .toml): study, mnist-mlp, ..."""
    folder = default_config_path().parent
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def resolve_study(name_or_path: Path | str | None) -> Path:
    """A study file: a path that exists, else a shipped study's name (`mnist-mlp`), else None -> the default.

    Raises:
        InputError: neither an existing file nor a shipped name (the message lists the names).
    """
    if name_or_path is None:
        return default_config_path()
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".toml", ".yaml", ".yml"):
        return path
    shipped = shipped_studies()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise InputError(f"--config {name_or_path}: no such file and no shipped study of that name ({', '.join(shipped)})")


def load_study_config(path: Path | str | None) -> StudyConfig:
    """Read and validate a study file (.toml, .yaml/.yml) or a shipped study by name; None gives the shipped
    default study.

    Raises:
        ValueError: unreadable file, unknown key, or invalid value (the message names it).
    """
    path = resolve_study(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read study config {path}: {err.strerror or err}") from None
    try:
        raw = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise ValueError(
            f"{path} is not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'TOML'}: {err}"
        ) from None
    if not isinstance(raw, dict):
        raise InputError(f"{path} must hold a table of settings")
    try:
        return StudyConfig(**raw)
    except ValueError as err:
        raise InputError(f"{path}: {describe(err)}") from None
