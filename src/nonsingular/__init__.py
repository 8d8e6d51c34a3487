"""nonsingular: attacks, certificates and robust training against joint input + weight perturbations."""

from ._version import __version__
from .apgd import APGD, AutoEnsemble
from .architectures import build_model
from .attacks import FGSM, PGD, Attack, AttackResult, Loss, TorchattacksAdapter
from .datasets import Dataset, load_data, load_digits
from .losses import AttackLoss, register_loss
from .models import MLP, Normalize
from .perturbation import LayerPath
from .threat import EpsMode, Scope, ThreatModel, WeightBall
from .verify import Verification, verify

__all__ = [
    "APGD",
    "FGSM",
    "MLP",
    "PGD",
    "Attack",
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
    "Verification",
    "WeightBall",
    "__version__",
    "build_model",
    "load_data",
    "load_digits",
    "register_loss",
    "verify",
]
