"""APGD and the APGD ensemble: the attack contract over every weight path, and the schedule's rules."""

import pytest
import torch
from torch import nn

from nonsingular import PGD, ThreatModel, check_attack
from nonsingular.attacks import targeted_dlr
from nonsingular.attacks.apgd import APGD, APGDSchedule, checkpoints
from nonsingular.attacks.ensemble import AutoEnsemble

THREATS = {
    "input": {"eps_x": 0.08},
    "joint": {"eps_x": 0.04, "eps_w": 0.003},
    "joint-relative-bias": {"eps_x": 0.03, "eps_w": 0.05, "weight_mode": "relative", "eps_b": 0.02},
    "joint-operator": {"eps_x": 0.03, "eps_w": 0.05, "weight_ball": "operator"},
    "weight": {"eps_w": 0.006},
}
ATTACKS = {
    "apgd-ce": lambda: APGD(steps=12),
    "apgd-t": lambda: APGD(steps=12, loss=targeted_dlr(1)),
    "ensemble": lambda: AutoEnsemble(steps=12, targets=2),
}


@pytest.mark.parametrize("scope", ["per-example", "shared"])
@pytest.mark.parametrize("name", list(THREATS))
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_apgd_contract(small_mlp, batch, attack, name, scope):
    x, y = batch
    threat = ThreatModel(**THREATS[name], scope=scope)
    small_mlp.train()
    result = ATTACKS[attack]()(small_mlp, x, y, threat)
    assert small_mlp.training, "the attack must restore the model's mode"
    small_mlp.eval()
    assert all(not m._forward_hooks for m in small_mlp.modules())
    check = check_attack(small_mlp, x, y, result)
    assert check.passed, check.problems
    assert check.max_logit_gap < 1e-4
    assert result.attack.startswith(("APGD(", "AutoEnsemble("))
    if attack == "ensemble":  # the default evaluation must be at least as strong as the old default
        pgd = check_attack(small_mlp, x, y, PGD(steps=10)(small_mlp, x, y, threat))
        assert check.accuracy <= pgd.accuracy


@pytest.mark.parametrize("path", ["explicit", "lemma1"])
def test_merged_rows_carry_their_own_weights(path):
    """merge_rows (how the ensemble keeps each example's worst result): the taken rows' inputs and weights come
    from the second attack, the others from the first, and the checker reproduces both sets of logits."""
    torch.manual_seed(0)
    if path == "explicit":
        model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 5))
        threat = ThreatModel(eps_x=0.05, eps_w=0.02, eps_b=0.01, layers=["0"])
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 5))
        threat = ThreatModel(eps_x=0.05, eps_w=0.02, eps_b=0.01)
    model.eval()
    x, y = torch.rand(24, 1, 6, 6), torch.randint(0, 5, (24,))
    first = APGD(steps=3, batch_size=10)(model, x, y, threat)
    rows, take = torch.tensor([1, 5, 7, 20]), torch.tensor([True, False, True, True])
    second = APGD(steps=4, seed=3, loss=targeted_dlr(1))(model, x[rows], y[rows], threat)
    merged = first.merge_rows(second, rows, take)
    assert set(merged.paths.values()) == {path}
    check = check_attack(model, x, y, merged)
    assert check.passed, check.problems
    assert check.max_logit_gap < 1e-4
    assert torch.equal(merged.x_adv[rows[take]], second.x_adv[take])
    others = torch.ones(24, dtype=torch.bool)
    others[rows[take]] = False
    assert torch.equal(merged.x_adv[others], first.x_adv[others])
    expected = check_attack(model, x[rows], y[rows], second).logits[take]
    assert torch.allclose(check.logits[rows[take]], expected, atol=1e-5)
    assert torch.allclose(check.logits[others], check_attack(model, x, y, first).logits[others], atol=1e-5)
    part = check_attack(model, x[rows], y[rows], merged.subset(rows))  # what the ensemble checks: a few rows
    assert part.passed and torch.allclose(part.logits, check.logits[rows], atol=1e-5)


def test_checkpoints_follow_the_apgd_sequence():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1) == [1]


def test_schedule_halves_the_step_and_returns_when_stalled():
    """Row 0 never improves (halve at the first checkpoint and go back); row 1 rises every step (keep the step)."""
    schedule = APGDSchedule(steps=100, initial=2.0)
    schedule.start(2, torch.device("cpu"))
    backs = []
    for step in range(23):
        loss = torch.tensor([1.0, float(step)])
        eta, improved, back = schedule.observe(step, loss)
        backs.append(back)
    assert step == 22 and backs[-1] is not None
    assert backs[-1].tolist() == [True, False]
    assert eta.tolist() == [0.0, 2.0], "the returning row moves nothing this step"
    assert schedule.eta.tolist() == [1.0, 2.0]
    assert all(b is None for b in backs[:-1])
    assert improved.tolist() == [False, True]


def test_schedule_halves_without_progress_even_when_rising():
    """A loss that oscillates upward half the time (below rho) halves too."""
    schedule = APGDSchedule(steps=100, initial=2.0)
    schedule.start(1, torch.device("cpu"))
    for step in range(23):
        _, _, back = schedule.observe(step, torch.tensor([float(step % 2)]))
    assert back is not None and back.tolist() == [True]


def test_bad_arguments():
    with pytest.raises(ValueError, match="abs_stepsize"):
        APGD(abs_stepsize=0.01)
    with pytest.raises(ValueError, match="alpha and rho"):
        APGD(alpha=0.0)
    with pytest.raises(ValueError, match="targets must be >= 0"):
        AutoEnsemble(targets=-1)
    with pytest.raises(ValueError, match="steps, restarts and batch_size must be >= 1"):
        AutoEnsemble(batch_size=0)


def test_ensemble_budget_and_repr():
    ens = AutoEnsemble(steps=30, restarts=2, targets=4)
    assert "steps=30" in repr(ens) and "targets=4" in repr(ens) and "restarts=2" in repr(ens)
    budget = {"steps": 30, "restarts": 2, "targets": 2, "shared_targets": 1, "max_gradient_steps_per_example": 120}
    assert ens.budget(classes=3) == budget
    assert [p.objective.name for p in ens.parts(classes=10)] == ["ce", "dlr-t1", "dlr-t2", "dlr-t3", "dlr-t4"]
    assert [p.objective.name for p in ens.parts(classes=10, shared=True)] == ["ce", "dlr-t1"]


def test_subset_random_starts_follow_global_indices(small_mlp, batch):
    """An attack on a scattered subset draws, per example, the start a run on all examples draws for it."""
    x, y = batch
    rows = torch.tensor([0, 3, 4, 17, 40, 41])
    start_only = PGD(steps=1, rel_stepsize=1e-9)  # a step of ~0: x_adv is the random start
    threat = ThreatModel(eps_x=0.1)
    whole = start_only(small_mlp, x, y, threat).x_adv
    part = start_only(small_mlp, x[rows], y[rows], threat, example_ids=rows).x_adv
    assert torch.allclose(part, whole[rows], atol=1e-6)
    with pytest.raises(ValueError, match="example_ids"):
        start_only(small_mlp, x[rows], y[rows], threat, example_ids=rows[:2])
