"""Attack losses by name: presets, a registered toy one, and the errors for bad names and shapes."""

import pytest
import torch

from nonsingular import PGD, AttackLoss, ThreatModel, check_attack, register_loss
from nonsingular.attacks import LOSSES, resolve_loss, targeted_dlr


def test_registered_loss_drives_the_attack(small_mlp, batch):
    x, y = batch
    calls = []

    def negative_true_logit(logits, labels, clean):
        calls.append(clean)
        return -logits.gather(1, labels[:, None]).squeeze(1)

    toy = AttackLoss("toy-neg-true-logit", negative_true_logit)
    try:
        register_loss(toy)
        with pytest.raises(ValueError, match="already registered"):
            register_loss(toy)
        attack = PGD(steps=5, loss="toy-neg-true-logit")
        assert "loss=toy-neg-true-logit" in repr(attack)
        result = attack(small_mlp, x, y, ThreatModel(eps_x=0.1))
    finally:
        LOSSES.pop(toy.name, None)
    assert calls and all(c is None for c in calls), "a loss that does not use clean logits gets None"
    check = check_attack(small_mlp, x, y, result)
    assert check.passed
    assert check.accuracy < (small_mlp(x).argmax(1) == y).float().mean()


def test_unknown_loss_and_bad_shape():
    with pytest.raises(ValueError, match="unknown attack loss 'nope'"):
        PGD(loss="nope")
    with pytest.raises(ValueError, match="target rank"):
        targeted_dlr(0)
    bad = AttackLoss("bad", lambda logits, y, clean: logits)
    with pytest.raises(ValueError, match="one value per example"):
        PGD(steps=1, loss=bad)(torch.nn.Linear(4, 3), torch.rand(2, 4), torch.tensor([0, 1]), ThreatModel(eps_x=0.1))


def test_kl_clean_is_zero_at_the_clean_point_and_dlr_is_scale_invariant():
    logits = torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    assert torch.allclose(resolve_loss("kl-clean")(logits, y, logits), torch.zeros(5), atol=1e-6)
    dlr = resolve_loss("dlr")
    assert torch.allclose(dlr(logits, y), dlr(3 * logits + 1, y), atol=1e-5)
    # hand-computed: logits (4, 3, 2, 1, 0), label 0, target = the 2nd largest clean logit (class 1)
    z = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert targeted_dlr(1)(z, torch.tensor([0]), z).item() == pytest.approx((3 - 4) / (4 - (2 + 1) / 2))
    assert targeted_dlr(2)(z, torch.tensor([0]), z).item() == pytest.approx((2 - 4) / (4 - (2 + 1) / 2))
    assert dlr(z, torch.tensor([0])).item() == pytest.approx((3 - 4) / (4 - 2))
