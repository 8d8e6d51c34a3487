"""Every objective trains: its own loss on a fixed batch goes down within a few epochs on the digits."""

from __future__ import annotations

import pytest
import torch

from nonsingular.threat import EpsMode, Scope
from nonsingular.training import (
    Adversarial,
    BoundRegularized,
    IBPCertified,
    ObjectiveName,
    StepContext,
    Trades,
    Trainer,
    build_objective,
    parse_objective,
    training_threat,
)
from train_support import one_thread, tiny_config

__all__ = ["one_thread"]

CASES = {
    "standard": {},
    "pgd-at": {},
    "trades": {},
    "awp": {},
    "joint-at": {},
    "joint-at-shared": {"objective": "joint-at", "scope": "shared"},
    "bound-reg": {"lambda_x": 0.05, "lambda_w": 0.05},
    "bound-reg-log": {"objective": "bound-reg", "log_domain": True, "lambda_x": 0.1, "lambda_w": 0.1},
    "ibp-certified": {"eps_x": 0.02, "eps_w": 0.0005, "warmup_epochs": 1},
    "pgd-at+awp": {},
    "joint-at+bound-reg": {},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_objective_reduces_its_own_loss(case: str, digits) -> None:
    options = {"objective": case, **CASES[case]}
    config = tiny_config(**options)
    trainer = Trainer(config, data=digits)
    objective = build_objective(config)
    x, y = digits.x_train[:128], digits.y_train[:128]
    ctx = StepContext(scale=1.0, seed=123)

    def loss() -> float:
        trainer.model.eval()
        return float(objective(trainer.model, x, y, ctx)["loss"].detach())

    before = loss()
    result = trainer.fit()
    after = loss()
    assert after < 0.8 * before, f"{case}: loss {before:.4f} -> {after:.4f}"
    assert len(result.metrics) == config.epochs
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_names_parse_compose_and_reject() -> None:
    assert parse_objective("pgd-at+awp") == (ObjectiveName.PGD_AT, ObjectiveName.AWP)
    assert parse_objective("bound-reg+standard") == (ObjectiveName.BOUND_REG,)
    assert parse_objective(ObjectiveName.TRADES) == (ObjectiveName.TRADES,)
    for bad, words in [
        ("fgsm", "unknown objective 'fgsm'"),
        ("pgd-at+trades", "use one base"),
        ("joint-at+awp", "awp cannot be combined"),
        ("awp+awp", "twice"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_objective(bad)


def test_objectives_get_the_threats_they_document() -> None:
    awp = training_threat(tiny_config(objective="awp"))
    assert (awp.eps_x, awp.eps_w, awp.weight_mode, awp.scope) == (0.0, 0.005, EpsMode.RELATIVE, Scope.SHARED)
    at_awp = build_objective(tiny_config(objective="pgd-at+awp"))
    assert isinstance(at_awp, Adversarial) and at_awp.threat.kind == "joint" and at_awp.threat.scope is Scope.SHARED
    pgd_at = build_objective(tiny_config(objective="pgd-at"))
    assert isinstance(pgd_at, Adversarial) and pgd_at.threat.kind == "input"
    joint = build_objective(tiny_config(objective="joint-at"))
    assert isinstance(joint, Adversarial) and joint.threat.kind == "joint"
    assert joint.threat.scope is Scope.PER_EXAMPLE and joint.threat.eps_w == 0.002
    assert isinstance(build_objective(tiny_config(objective="trades")), Trades)
    assert isinstance(build_objective(tiny_config(objective="ibp-certified")), IBPCertified)
    reg = build_objective(tiny_config(objective="joint-at+bound-reg"))
    assert isinstance(reg, BoundRegularized) and isinstance(reg.base, Adversarial)


def test_adversarial_point_is_worse_than_clean(digits) -> None:
    """The perturbed forward pass the joint objective trains on has a higher loss than the clean one."""
    config = tiny_config(objective="joint-at", attack_steps=5)
    trainer = Trainer(config, data=digits)
    trainer.fit()
    model = trainer.model.eval()
    x, y = digits.x_test[:64], digits.y_test[:64]
    with torch.no_grad():
        clean = float(torch.nn.functional.cross_entropy(model(x), y))
    # Not under no_grad: PGD differentiates inside (and its loss sum is taken outside its enable_grad block).
    adversarial = float(build_objective(config)(model, x, y, StepContext())["loss"].detach())
    assert adversarial > clean
