"""The scale analysis: rescaling keeps the function and the relative-mode results, moves the absolute ones;
layer statistics are the Lemma 1 quantities; four-parametrization verdicts are read from the results."""

import pytest
import torch

from nonsingular import PGD, ThreatModel
from nonsingular.evaluation import evaluate_cell
from nonsingular.study.scale import PARAMETRIZATIONS, layer_stats, parametrization_comparisons, rescaled
from nonsingular.threat import EpsMode, WeightBall
from tests.support.study_results import study_results


def test_rescaled_same_function_other_scale(small_mlp, digits):
    x = digits.x_test[:40]
    for c in (0.5, 3.0):
        other = rescaled(small_mlp, c)
        with torch.no_grad():
            assert torch.allclose(other(x), small_mlp(x), atol=1e-5)
        layers = [m for m in other.modules() if isinstance(m, torch.nn.Linear)]
        originals = [m for m in small_mlp.modules() if isinstance(m, torch.nn.Linear)]
        assert torch.allclose(layers[0].weight, c * originals[0].weight)
        assert torch.allclose(layers[1].weight, originals[1].weight / c)
    with pytest.raises(ValueError, match="> 0"):
        rescaled(small_mlp, 0.0)


def test_relative_mode_invariant_absolute_mode_moves(small_mlp, digits):
    """Same attack and seed: relative radii give the same checked accuracy after rescaling by 4 (a power of two:
    exact in floating point); an absolute radius does not (relative to the second layer's weights, now 4x
    smaller, it is 4x larger)."""
    x, y = digits.x_test[:60], digits.y_test[:60]
    with torch.no_grad():
        clean = small_mlp(x).argmax(1) == y
    other = rescaled(small_mlp, 4.0)
    attack = PGD(steps=5, seed=0)
    moved = {}
    for ball, mode, eps in (
        (WeightBall.ELEMENTWISE, EpsMode.RELATIVE, 0.05),
        (WeightBall.OPERATOR, EpsMode.RELATIVE, 0.01),
        (WeightBall.ELEMENTWISE, EpsMode.ABSOLUTE, 0.005),
    ):
        threat = ThreatModel(eps_w=eps, weight_ball=ball, weight_mode=mode)
        before = evaluate_cell(small_mlp, x, y, threat, attack, clean).accuracy
        after = evaluate_cell(other, x, y, threat, attack, clean).accuracy
        moved[(ball, mode)] = after - before
    assert moved[(WeightBall.ELEMENTWISE, EpsMode.RELATIVE)] == pytest.approx(0.0, abs=1 / 60)
    assert moved[(WeightBall.OPERATOR, EpsMode.RELATIVE)] == pytest.approx(0.0, abs=1 / 60)
    assert abs(moved[(WeightBall.ELEMENTWISE, EpsMode.ABSOLUTE)]) > 0.2  # 58% -> 10% on this model


def test_layer_stats(small_mlp, digits):
    x = digits.x_test[:30]
    stats = layer_stats(small_mlp, x)
    first = next(m for m in small_mlp.modules() if isinstance(m, torch.nn.Linear)).weight.detach()
    assert len(stats) == 3
    with torch.no_grad():
        h0 = small_mlp[0](x)  # the Normalize layer's output is the first Linear's input
    assert stats[0]["input_l1"] == pytest.approx(float(h0.flatten(1).abs().sum(1).mean()), rel=1e-5)
    assert stats[0]["operator"] == pytest.approx(float(first.abs().sum(1).max()), rel=1e-6)
    assert stats[0]["max_abs"] == pytest.approx(float(first.abs().max()), rel=1e-6)


def test_parametrization_verdicts_read_each_ball_and_mode():
    def cells(objective_shift):
        rows = []
        for ball, mode in PARAMETRIZATIONS:
            for seed, noise in ((0, 0.0), (1, 0.01), (2, -0.01)):
                # The operator ball flips the sign of the weight-only difference.
                acc = 0.5 + noise + (objective_shift if ball is WeightBall.ELEMENTWISE else -objective_shift)
                for ex in (0.0, 0.1):
                    rows.append(
                        {"weight_ball": ball.value, "weight_mode": mode.value, "eps_x": ex, "eps_w": 0.01}
                        | {"scope": "per-example", "seed": seed, "accuracy": acc}
                    )
        return [{"seed": s, "scale": {"cells": [c for c in rows if c["seed"] == s]}} for s in (0, 1, 2)]

    results = {
        "headline": {"eps_x": 0.1, "eps_w": 0.01},
        "grid": {"scopes": ["per-example"]},
        "models": {
            "std": {"objective": "standard", "runs": cells(0.0)},
            "adv": {"objective": "pgd-at", "runs": cells(-0.2)},
        },
    }
    found = parametrization_comparisons(study_results(results))
    verdicts = {label: [c.verdict for c in comparisons] for label, comparisons in found.items()}
    assert verdicts == {
        "elementwise absolute": ["holds"],
        "elementwise relative": ["holds"],
        "operator absolute": ["does not hold"],
        "operator relative": ["does not hold"],
    }


def test_scale_summary_names_an_exact_rescaling(monkeypatch):
    """A rescaling by powers of two leaves the logits bit-identical: the report says so instead of 'moves by at
    most 0'; a real change is given with its size."""
    from nonsingular.study import scale

    rows = [{"parametrization": "elementwise absolute", "max_logit_change": 0.0, "change": -0.3}]
    tables = {"scale_layers": [], "scale_rescaling": rows, "scale_verdicts": []}
    monkeypatch.setattr(scale, "scale_rows", lambda results: tables)
    (line,) = scale.scale_summary(study_results({}))
    assert "the logits are bit-identical" in line and "up to 30.0 points" in line
    rows[0]["max_logit_change"] = 2.5e-6
    (line,) = scale.scale_summary(study_results({}))
    assert "the function moves by at most 2.5e-06 in any logit" in line
