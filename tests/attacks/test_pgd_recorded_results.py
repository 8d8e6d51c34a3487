"""PGD reproduces results recorded from its loop as it was before it gained the loss and schedule hooks.

The masks (attack's own prediction == label) and input sums were computed with the loop as it was before the
hooks (commit 7f8a0bd), on a seeded MLP and a seeded random CNN, for ce and margin on every weight path.
"""

import pytest
import torch

from nonsingular import PGD, ThreatModel
from nonsingular.models import SmallCNN
from tests.support import train_mlp

CASES = {
    "mlp-input-ce": ("mlp", {"eps_x": 0.1}, "ce"),
    "mlp-joint-margin": ("mlp", {"eps_x": 0.05, "eps_w": 0.003}, "margin"),
    "mlp-joint-rel-bias": ("mlp", {"eps_x": 0.03, "eps_w": 0.05, "weight_mode": "relative", "eps_b": 0.02}, "ce"),
    "mlp-joint-operator": ("mlp", {"eps_x": 0.03, "eps_w": 0.05, "weight_ball": "operator"}, "margin"),
    "mlp-joint-shared": ("mlp", {"eps_x": 0.05, "eps_w": 0.01, "scope": "shared"}, "ce"),
    "mlp-weight-shared-op": ("mlp", {"eps_w": 0.1, "weight_ball": "operator", "scope": "shared"}, "margin"),
    "cnn-joint-explicit": ("cnn", {"eps_x": 0.1, "eps_w": 0.02, "eps_b": 0.02}, "ce"),
    "cnn-joint-operator": ("cnn", {"eps_x": 0.1, "eps_w": 0.05, "weight_ball": "operator"}, "margin"),
}

#: (mask of examples the attack left correct, sum of x_adv to 4 decimals), from the loop before the hooks.
BEFORE = {
    "mlp-input-ce": ("0101001001010110001110111001100011100111", 844.2858),
    "mlp-joint-margin": ("0101001001110110101110111001100011100111", 816.9362),
    "mlp-joint-rel-bias": ("0000000000000010000010000000000010000010", 808.1692),
    "mlp-joint-operator": ("0101001001110110101110111101101011100111", 808.6608),
    "mlp-joint-shared": ("0100000010010110101100001001100011000011", 812.1565),
    "mlp-weight-shared-op": ("0101101111111110101111111111111111110011", 795.25),
    "cnn-joint-explicit": ("0000000000000000000000000000000000000000", 847.7802),
    "cnn-joint-operator": ("0000000000000000000000100000000100000000", 846.7858),
}


@pytest.fixture(scope="module")
def models(digits):
    torch.manual_seed(0)
    cnn = SmallCNN(digits.input_shape, 10, digits.mean, digits.std, channels=(2, 4), hidden=16).eval()
    return {"mlp": train_mlp(digits), "cnn": cnn}


@pytest.mark.parametrize("name", list(CASES))
def test_pgd_unchanged_by_the_hooks(models, digits, name):
    model_name, threat, loss = CASES[name]
    x, y = digits.x_test[:40], digits.y_test[:40]
    result = PGD(steps=6, restarts=2, loss=loss, batch_size=16)(models[model_name], x, y, ThreatModel(**threat))
    mask = "".join("1" if ok else "0" for ok in (result.logits.argmax(1) == y).tolist())
    expected_mask, expected_sum = BEFORE[name]
    assert mask == expected_mask
    assert round(float(result.x_adv.double().sum()), 4) == pytest.approx(expected_sum, abs=2e-4)
