"""Attacks on the joint threat: one projected-gradient loop and what varies around it.

Owns the `Attack` protocol (`protocol`), the PGD loop (`pgd`, its step pieces in `pgd_steps`), APGD (`apgd`),
the default ensemble (`ensemble`), attacks by name (`factory`), attack losses (`losses`), results with their
explicit perturbed weights (`result`), the perturbation blocks that put weights on the Lemma 1, explicit or
shared path (`perturbation`), the operator ball's projection and rounding (`weight_ball`), the autograd-free
MLP path (`fused_mlp`) and sanity flags (`sanity`). May import the vocabulary (`threat`, `errors`), `runtime`,
`models` and the independent checker `check` (the ensemble keeps only checked results); never `bounds`,
`evaluation`, `training`, `study` or `cli`.
"""

from .apgd import APGD, APGDSchedule
from .ensemble import AutoEnsemble
from .factory import DEFAULT_STEPS, AttackKind, make_attack
from .losses import LOSSES, AttackLoss, Loss, register_loss, resolve_loss, targeted_dlr
from .perturbation import LayerPath
from .pgd import FGSM, PGD
from .protocol import Attack, Progress, StepSchedule, TorchattacksAdapter
from .result import AttackResult
from .sanity import SanityFlag

__all__ = [
    "APGD",
    "DEFAULT_STEPS",
    "FGSM",
    "LOSSES",
    "PGD",
    "APGDSchedule",
    "Attack",
    "AttackKind",
    "AttackLoss",
    "AttackResult",
    "AutoEnsemble",
    "LayerPath",
    "Loss",
    "Progress",
    "SanityFlag",
    "StepSchedule",
    "TorchattacksAdapter",
    "make_attack",
    "register_loss",
    "resolve_loss",
    "targeted_dlr",
]
