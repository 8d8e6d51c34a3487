"""Every objective trains: its own loss on a fixed batch goes down within a few epochs on the digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nonsingular.threat import EpsMode, Scope, ThreatModel
from nonsingular.training import (
    Adversarial,
    BoundRegularized,
    IBPCertified,
    ObjectiveSpec,
    Role,
    Standard,
    StepContext,
    Trades,
    Trainer,
    build_objective,
    objective_names,
    parse_objective,
    register_objective,
    training_threat,
    unregister_objective,
)
from tests.support.training import tiny_config

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
    def names(spec):
        return [p.name for p in parse_objective(spec)]

    assert names("pgd-at+awp") == ["pgd-at", "awp"]
    assert names("bound-reg+awp") == ["standard", "awp", "bound-reg"]  # canonical order, implicit base
    assert names(["trades"]) == ["trades"]
    assert tiny_config(objective="bound-reg+standard").objective == "bound-reg"
    assert tiny_config(objective="bound-reg + joint-at").objective == "joint-at+bound-reg"
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


def test_names_compose_into_the_objectives_they_stand_for() -> None:
    """Each name builds exactly the objects its documentation describes (the pre-registry factory's)."""
    steps, beta, kappa = 4, 3.0, 0.3
    config = {"eps_x": 0.04, "eps_w": None, "attack_steps": steps, "trades_beta": beta, "ibp_kappa": kappa}
    joint = ThreatModel(eps_x=0.04, eps_w=0.002)
    awp = ThreatModel(eps_x=0.04, eps_w=0.005, weight_mode="relative", scope="shared")
    per_example = Scope.PER_EXAMPLE
    expected = {
        "standard": Standard(),
        "pgd-at": Adversarial(joint.input_only(), steps),
        "trades": Trades(joint.input_only(), steps, beta),
        "awp": Adversarial(awp.weight_only(), steps),
        "joint-at": Adversarial(joint, steps),
        "ibp-certified": IBPCertified(joint, kappa),
        "pgd-at+awp": Adversarial(awp, steps),
        "trades+awp": Trades(awp, steps, beta),
        "bound-reg": BoundRegularized(Standard(), joint, 0.01, 0.01, False),
        "awp+bound-reg": BoundRegularized(
            Adversarial(awp.weight_only(), steps), awp.weight_only().with_scope(per_example), 0.01, 0.01, False
        ),
        "joint-at+bound-reg": BoundRegularized(Adversarial(joint, steps), joint, 0.01, 0.01, False),
    }
    for name, objective in expected.items():
        assert build_objective(tiny_config(objective=name, **config)) == objective, name
    assert tiny_config(objective="ibp-certified", epochs=5).warmup == 2
    assert tiny_config(objective="ibp-certified+bound-reg", epochs=5, warmup_epochs=0).warmup == 0
    assert tiny_config(objective="joint-at", epochs=5).warmup == 0


class LabelSmoothing:
    """A toy objective: cross-entropy against labels smoothed by `smoothing`."""

    def __init__(self, smoothing: float) -> None:
        self.smoothing = smoothing

    def describe(self) -> dict[str, object]:
        return {"kind": "label-smoothing", "smoothing": self.smoothing}

    def __call__(self, model, x, y, ctx):
        logits = model(x)
        return {"loss": F.cross_entropy(logits, y, label_smoothing=self.smoothing), "logits": logits}


def test_a_registered_objective_trains(digits) -> None:
    """Adding an objective is its class plus one registration; it then composes with the modifiers."""
    spec = ObjectiveSpec(
        name="toy-smooth", role=Role.BASE, build=lambda threat: LabelSmoothing(0.1), summary="smoothed CE"
    )
    register_objective(spec)
    try:
        assert "toy-smooth" in objective_names()
        with pytest.raises(ValueError, match="already registered"):
            register_objective(spec)
        with pytest.raises(ValueError, match="cannot be called as build"):
            ObjectiveSpec(name="toy-2", role=Role.BASE, build=lambda threat: LabelSmoothing(0.1), options=("lr",))
        result = Trainer(tiny_config(objective="toy-smooth", epochs=1), data=digits).fit()
        training = result.metadata["training"]
        assert training["objective"] == "toy-smooth"
        assert training["objective_details"] == {"kind": "label-smoothing", "smoothing": 0.1}
        assert result.metadata["threat"] is None
        loss = result.metrics[0]["train_loss"]
        assert loss is not None and 0 < loss < 2.4  # below log(10) = 2.30 plus the smoothing's floor
        reg = build_objective(tiny_config(objective="toy-smooth+bound-reg"))
        assert isinstance(reg, BoundRegularized) and isinstance(reg.base, LabelSmoothing)
        with pytest.raises(ValueError, match="awp cannot be combined with toy-smooth"):
            tiny_config(objective="toy-smooth+awp")
    finally:
        unregister_objective("toy-smooth")
    with pytest.raises(ValueError, match="unknown objective 'toy-smooth'"):
        tiny_config(objective="toy-smooth")
