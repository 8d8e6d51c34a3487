"""Each sanity flag is raised by a case built to trigger it, and stays silent on a healthy model."""

import pytest
import torch
from torch import nn

from nonsingular import PGD, ThreatModel
from nonsingular.attacks.sanity import gradient_flag, nested_flag, train_eval_flag
from nonsingular.evaluation import Cell, evaluate_robustness, sanity_flags


class _Staircase(nn.Module):
    """Rounds its input to a coarse grid: zero gradient almost everywhere (gradient masking)."""

    def forward(self, x):
        return torch.round(x * 4) / 4


def _masked_model():
    torch.manual_seed(0)
    return nn.Sequential(_Staircase(), nn.Flatten(), nn.Linear(16, 3)).eval()


def _cell(accuracy):
    return Cell(accuracy, accuracy, True, 0.0, 0.0, {}, {})


def test_nested_flag_names_the_larger_cell():
    accuracy = {"input per-example": 0.50, "joint per-example": 0.55, "weight per-example": 0.6}
    flag = nested_flag(
        accuracy, [("input per-example", "joint per-example"), ("weight per-example", "joint per-example")]
    )
    assert flag is not None and flag.check == "nested" and flag.cells == ["joint per-example"]
    assert "55.0% > input per-example 50.0%" in flag.message
    assert nested_flag({"a": 0.5, "b": 0.5}, [("a", "b")]) is None


def test_nested_flag_through_evaluation_cells(small_mlp, batch):
    x, y = batch
    cells = {
        "input": {"per-example": _cell(0.4), "shared": _cell(0.4)},
        "weight": {"per-example": _cell(0.7), "shared": _cell(0.6)},  # per-example contains shared: flagged
        "joint": {"per-example": _cell(0.3), "shared": _cell(0.35)},
    }
    flags = sanity_flags(small_mlp, x, y, cells, {}, {}, PGD(), noise_samples=0)
    assert [f.check for f in flags] == ["nested"]
    assert flags[0].cells == ["weight per-example"]


def test_noise_and_gradient_flags_on_a_masked_model():
    """A staircase model gives the gradient attack nothing; random points still break examples."""
    model = _masked_model()
    x = torch.rand(64, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)  # every example correct at the clean point
    report = evaluate_robustness(model, x, y, ThreatModel(eps_x=0.3), PGD(steps=3, random_start=False))
    checks = {f.check: f for f in report.flags}
    assert "noise" in checks and checks["noise"].cells == ["input per-example"]
    assert "gradients" in checks and "exactly zero" in checks["gradients"].message
    assert report.to_json()["flags"][0]["check"] in {"noise", "gradients"}


def test_gradient_flag_non_finite():
    class Log(nn.Module):
        def forward(self, x):
            return torch.log(x.flatten(1) - 0.5)  # NaN below 0.5

    x = torch.rand(8, 1, 2, 2)
    flag = gradient_flag(Log(), x, torch.zeros(8, dtype=torch.long))
    assert flag is not None and "non-finite" in flag.message


def test_train_eval_flag_on_batchnorm_with_stale_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    model[2].running_mean.fill_(5.0)  # eval() uses these; train() uses the batch's own statistics
    x = torch.rand(64, 1, 2, 2)
    with torch.no_grad():
        y = model.train()(x).argmax(1)  # labels the train-mode forward gets right
    model.eval()[2].running_mean.fill_(5.0)  # that forward moved them a little
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flag = train_eval_flag(model, x, y)
    assert flag is not None and flag.check == "train-eval" and "BatchNorm" in flag.message
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "running statistics moved"


@pytest.mark.parametrize("flag", [gradient_flag, train_eval_flag])
def test_no_flag_on_a_healthy_mlp(small_mlp, batch, flag):
    x, y = batch
    assert flag(small_mlp, x, y) is None
