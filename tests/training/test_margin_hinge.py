"""bound-reg's margin-hinge form: Theorem 2's margin bound penalised only where it exceeds the clean margin."""

from __future__ import annotations

import pytest
import torch

from nonsingular.bounds import sensitivity_terms
from nonsingular.threat import ThreatModel
from nonsingular.training import BoundRegularized, Standard, StepContext, Trainer, build_objective
from tests.support.training import tiny_config


def _model(digits):
    return Trainer(tiny_config(epochs=1), data=digits).fit().model.eval()


def test_hinge_is_lambda_relu_of_bound_minus_margin(digits) -> None:
    model = _model(digits)
    x, y = digits.x_train[:64], digits.y_train[:64]
    threat = ThreatModel(eps_x=0.05, eps_w=0.002)
    ctx = StepContext(scale=1.0, seed=0)
    lam = 0.3
    hinge = BoundRegularized(Standard(), threat, lam, lam, margin_hinge=True)(model, x, y, ctx)
    plain = Standard()(model, x, y, ctx)
    with torch.no_grad():
        terms = sensitivity_terms(model, x, threat)
        logits = model(x)
    top2 = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    margin = logits.gather(1, y[:, None]).squeeze(1) - top2
    expected = lam * torch.relu(2 * (terms.r_x + terms.r_w) - margin).mean()
    assert float(expected) > 0  # some examples are not certified at this radius
    assert float((hinge["loss"] - plain["loss"]).detach()) == pytest.approx(float(expected), rel=1e-4)
    # A radius small enough that every correctly classified example clears its bound adds nothing for them.
    tiny = ThreatModel(eps_x=1e-7, eps_w=1e-9)
    correct = logits.argmax(1) == y
    out = BoundRegularized(Standard(), tiny, lam, lam, margin_hinge=True)(model, x[correct], y[correct], ctx)
    base = Standard()(model, x[correct], y[correct], ctx)["loss"]
    assert float(out["loss"].detach()) == pytest.approx(float(base.detach()))


def test_hinge_option_reaches_the_objective_and_refuses_log_domain() -> None:
    reg = build_objective(tiny_config(objective="joint-at+bound-reg", margin_hinge=True))
    assert isinstance(reg, BoundRegularized) and reg.margin_hinge
    with pytest.raises(ValueError, match="margin_hinge"):
        tiny_config(objective="bound-reg", margin_hinge=True, log_domain=True)


def test_train_cli_margin_hinge_flag(monkeypatch, capsys, tmp_path) -> None:
    from nonsingular.models import load_checkpoint
    from tests.support import run_cli

    out = tmp_path / "hinge.safetensors"
    args = ["train", "--objective", "bound-reg", "--margin-hinge", "--epochs", "1", "-o", str(out)]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert load_checkpoint(out).metadata["training"]["objective_details"]["margin_hinge"] is True
    code, _, err = run_cli(monkeypatch, capsys, *args[:-2], "--log-domain", "-o", str(tmp_path / "x.safetensors"))
    assert code == 2 and "log_domain" in err and len(err.strip().splitlines()) == 1
