"""The independent checker of attack results: is a claimed adversarial point inside the threat set, and does the
ordinary module, run on explicit perturbed weights, misclassify it?

"Checked" robust accuracy counts only results this package confirms. It shares no code with the attacks it
checks: it imports only the vocabulary (`threat`) and declares the `Witness` it reads. (Proofs are elsewhere:
`bounds` certifies, `complete` and `verification` verify.)
"""

from .checker import LOGIT_TOLERANCE_EPS, TF32_EPS, AttackCheck, Witness, check_attack, logit_tolerance

__all__ = ["LOGIT_TOLERANCE_EPS", "TF32_EPS", "AttackCheck", "Witness", "check_attack", "logit_tolerance"]
