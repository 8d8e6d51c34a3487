"""The training-objective registry: what an objective is, how it is named, and how names compose.

An objective is registered once as an `ObjectiveSpec`: its name, whether it is a base (a loss on its own) or a
modifier (it transforms a base, as awp and bound-reg do), the config defaults it changes, and its builder. A
config names one base and any modifiers joined by "+" ("pgd-at+awp"); `parse_objective` resolves the names
here, and `objectives.build_objective` builds the base and lets each modifier wrap it in canonical order, the
way optax's `chain` composes transformations. This module imports nothing of the training package, so the
config can validate names without importing the objectives.

Registering an objective (the built-ins are registered in `objectives`):

    register_objective(ObjectiveSpec(name="my-loss", role=Role.BASE, build=lambda threat: MyLoss()))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from torch import Tensor, nn

from ..threat import EpsMode, ThreatModel

__all__ = [
    "DEFAULT_BASE",
    "THREAT_DEFAULTS",
    "Objective",
    "ObjectiveSpec",
    "Role",
    "StepContext",
    "canonical_name",
    "config_default",
    "objective_names",
    "objective_spec",
    "parse_objective",
    "register_objective",
    "split_objective",
    "unregister_objective",
]

#: The base a name without one stands on ("awp" is "standard+awp").
DEFAULT_BASE = "standard"

#: Training-threat defaults of every objective, for config fields left None (a spec's `defaults` override
#: them): the absolute element-wise weight radius 0.002, and no epsilon warm-up.
THREAT_DEFAULTS: Mapping[str, Any] = {"eps_w": 0.002, "weight_mode": EpsMode.ABSOLUTE, "warmup_epochs": 0}


@dataclass(frozen=True)
class StepContext:
    """What an objective needs to know about the current step.

    Attributes:
        scale: epsilon warm-up factor in [0, 1]; the training threat's radii are multiplied by it.
        seed: seed of this step's random starts (derived from the run seed, epoch and step: resumable).
        first_index: position of x[0] in the global batch when x is this rank's share of it (else 0).
        n_batch: examples in the global batch over all ranks; None: x is the whole batch.
    """

    scale: float = 1.0
    seed: int = 0
    first_index: int = 0
    n_batch: int | None = None


class Objective(Protocol):
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        """Loss and logits on a batch: x (N, *input_shape) in the data domain, y (N,) labels.

        Returns {"loss": scalar mean over the N examples, "logits": (N, classes), ...more scalars to log}
        (the trainer reweighs unequal shares of a distributed batch).
        """
        ...

    def describe(self) -> dict[str, Any]:
        """Plain-JSON description (kind, threat in full, hyper-parameters) for the checkpoint."""
        ...


class Role(str, Enum):
    """A base is a loss on its own; a modifier transforms the objective built so far (and the threat)."""

    BASE = "base"
    MODIFIER = "modifier"


@dataclass(frozen=True, kw_only=True)
class ObjectiveSpec:
    """One registered objective.

    Attributes:
        name: what configs and the CLI call it (no "+").
        role: base or modifier.
        build: base: build(threat, **options) -> Objective; modifier: build(inner, threat, **options) ->
            Objective, `inner` being the objective built from the base and the modifiers before this one.
            `threat` is the training threat (`objectives.training_threat`), with every default applied.
        options: TrainConfig fields passed to `build` by keyword (e.g. ("attack_steps", "trades_beta")).
        defaults: values for TrainConfig fields the config leaves None (eps_w, weight_mode, warmup_epochs); a
            callable value is called with the config. Later parts of a name override earlier ones.
        adjust_threat: modifier only: the training threat given (threat, base spec), e.g. awp's shared scope.
        modifies: modifier only: names of the bases it can modify; None: every base.
        honours_scope: the objective trains under the config's `scope` (per-example or shared); a config
            asking for the shared scope must name at least one such part (the others would ignore it).
        summary: one line for help texts: the loss and what it perturbs.
    """

    name: str
    role: Role
    build: Callable[..., Objective]
    options: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    adjust_threat: Callable[[ThreatModel, ObjectiveSpec], ThreatModel] | None = None
    modifies: tuple[str, ...] | None = None
    honours_scope: bool = False
    summary: str = ""

    def __post_init__(self) -> None:
        if not self.name or "+" in self.name or self.name != self.name.strip():
            raise ValueError(f"objective name {self.name!r} must be non-empty, without '+' or surrounding spaces")
        object.__setattr__(self, "role", Role(self.role))
        if self.role is Role.BASE and (self.adjust_threat is not None or self.modifies is not None):
            raise ValueError(f"objective {self.name!r}: adjust_threat and modifies belong to modifiers")
        # A builder that cannot take what build_objective passes would fail only when someone trains with it.
        positional = ("threat",) if self.role is Role.BASE else ("inner", "threat")
        try:
            inspect.signature(self.build).bind(*positional, **dict.fromkeys(self.options))
        except TypeError as err:
            call = ", ".join([*positional, *(f"{o}=..." for o in self.options)])
            raise ValueError(f"objective {self.name!r}: build cannot be called as build({call}): {err}") from None


_REGISTRY: dict[str, ObjectiveSpec] = {}


def register_objective(spec: ObjectiveSpec) -> ObjectiveSpec:
    """Add `spec` to the registry; returns it.

    Raises:
        ValueError: an objective of that name is already registered.
    """
    if spec.name in _REGISTRY:
        raise ValueError(f"an objective named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_objective(name: str) -> None:
    """Remove a registered objective (for tests and plug-ins that register temporarily)."""
    _REGISTRY.pop(objective_spec(name).name)


def objective_names() -> tuple[str, ...]:
    """Registered names, in registration order."""
    return tuple(_REGISTRY)


def objective_spec(name: str) -> ObjectiveSpec:
    """The spec registered as `name`.

    Raises:
        ValueError: no objective has that name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise ValueError(f"unknown objective {name!r}; known: {known} (combine with '+')") from None


def parse_objective(spec: str | Sequence[str]) -> tuple[ObjectiveSpec, ...]:
    """The parts of an objective name in canonical order: the base, then modifiers in registration order.

    A name without a base stands on DEFAULT_BASE ("awp" is standard + awp); the base is always first.

    Raises:
        ValueError: an unknown name, a repeated name, two bases, or a modifier on a base it cannot modify.
    """
    tokens = [t.strip() for t in spec.split("+")] if isinstance(spec, str) else [str(t) for t in spec]
    parts = [objective_spec(t) for t in tokens]
    if len({p.name for p in parts}) != len(parts):
        raise ValueError(f"objective {spec!r} names a part twice")
    bases = [p for p in parts if p.role is Role.BASE]
    if len(bases) > 1:
        raise ValueError(f"objective {spec!r} combines {bases[0].name} and {bases[1].name}; use one base")
    base = bases[0] if bases else objective_spec(DEFAULT_BASE)
    order = list(_REGISTRY)
    modifiers = sorted((p for p in parts if p.role is Role.MODIFIER), key=lambda p: order.index(p.name))
    for m in modifiers:
        if m.modifies is not None and base.name not in m.modifies:
            raise ValueError(f"{m.name} cannot be combined with {base.name} (it modifies {', '.join(m.modifies)})")
    return (base, *modifiers)


def split_objective(parts: Sequence[ObjectiveSpec]) -> tuple[ObjectiveSpec, tuple[ObjectiveSpec, ...]]:
    """(base, modifiers) of parsed parts."""
    return parts[0], tuple(parts[1:])


def canonical_name(parts: Sequence[ObjectiveSpec]) -> str:
    """The name configs store: parts joined by "+", the default base left out when a modifier is given."""
    base, modifiers = split_objective(parts)
    names = [p.name for p in modifiers] if modifiers and base.name == DEFAULT_BASE else [p.name for p in parts]
    return "+".join(names)


def config_default(parts: Sequence[ObjectiveSpec], key: str, config: Any) -> Any:
    """The objective's default for config field `key`: THREAT_DEFAULTS, overridden by each part in order.

    Args:
        parts: parsed objective parts.
        key: a TrainConfig field that may be None (eps_w, weight_mode, warmup_epochs).
        config: passed to callable defaults (e.g. ibp-certified's half of the epochs).
    """
    value = THREAT_DEFAULTS.get(key)
    for part in parts:
        if key in part.defaults:
            value = part.defaults[key]
    return value(config) if callable(value) else value
