"""The three public tasks on a model and a threat: evaluate (checked robust accuracy per kind and scope),
certify (lower bounds on robust accuracy, with tightness against the attack) and radius (per-example radii along
a ray of threats, attacked from above and certified from below).

Each returns a typed report that round-trips to JSON. May import the vocabulary, `runtime`, `models`, `check`,
`attacks` and `bounds`; the CLI and the study sit above it.
"""

from .certify import (
    Certificate,
    CertifyReport,
    ExampleBounds,
    MethodResult,
    Tightness,
    certified_mask,
    certify,
    example_bounds,
)
from .evaluate import (
    KINDS,
    SCOPES,
    Cell,
    CheckedAttack,
    NoiseCheck,
    RobustnessReport,
    attack_and_check,
    collect_flags,
    evaluate_cell,
    evaluate_robustness,
    sanity_flags,
)
from .radius import RadiusReport, RadiusResult, RadiusSettings, Ray, attacked_radius, certified_radius, measure_radii

__all__ = [
    "KINDS",
    "SCOPES",
    "Cell",
    "Certificate",
    "CertifyReport",
    "CheckedAttack",
    "ExampleBounds",
    "MethodResult",
    "NoiseCheck",
    "RadiusReport",
    "RadiusResult",
    "RadiusSettings",
    "Ray",
    "RobustnessReport",
    "Tightness",
    "attack_and_check",
    "attacked_radius",
    "certified_mask",
    "certified_radius",
    "certify",
    "collect_flags",
    "evaluate_cell",
    "evaluate_robustness",
    "example_bounds",
    "measure_radii",
    "sanity_flags",
]
