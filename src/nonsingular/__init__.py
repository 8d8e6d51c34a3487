"""nonsingular: attacks, certificates and robust training against joint input + weight perturbations."""

from ._version import __version__
from .attacks import (
    APGD,
    FGSM,
    PGD,
    Attack,
    AttackLoss,
    AttackResult,
    AutoEnsemble,
    LayerPath,
    Loss,
    TorchattacksAdapter,
    register_loss,
)
from .check import AttackCheck, check_attack
from .datasets import Dataset, load_data, load_digits
from .models import MLP, Normalize, build_model
from .threat import EpsMode, Scope, ThreatModel, WeightBall

__all__ = [
    "APGD",
    "FGSM",
    "MLP",
    "PGD",
    "Attack",
    "AttackCheck",
    "AttackLoss",
    "AttackResult",
    "AutoEnsemble",
    "Dataset",
    "EpsMode",
    "LayerPath",
    "Loss",
    "Normalize",
    "Scope",
    "ThreatModel",
    "TorchattacksAdapter",
    "WeightBall",
    "__version__",
    "build_model",
    "check_attack",
    "load_data",
    "load_digits",
    "register_loss",
]


#: Names kept for code written before the checker was renamed (`verify` now means proving a property).
_DEPRECATED = {"verify": ("check_attack", check_attack), "Verification": ("AttackCheck", AttackCheck)}
_warned: set[str] = set()


def __getattr__(name: str) -> object:
    if name in _DEPRECATED:
        new, value = _DEPRECATED[name]
        if name not in _warned:  # once per process, as the deprecation policy promises
            _warned.add(name)
            import warnings

            warnings.warn(
                f"nonsingular.{name} is deprecated: it checks an attack's result; use nonsingular.{new}",
                DeprecationWarning,
                stacklevel=2,
            )
        return value
    raise AttributeError(f"module 'nonsingular' has no attribute {name!r}")
