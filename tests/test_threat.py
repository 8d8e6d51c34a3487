import math

import pytest
import torch
from pydantic import ValidationError

from nonsingular import ThreatModel
from nonsingular.errors import describe


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"eps_x": -0.1}, "eps_x"),
        ({"eps_w": math.nan}, "eps_w"),
        ({"eps_b": math.inf}, "eps_b"),
        ({"eps_w": -1e-9}, "eps_w"),
        ({"domain": (1.0, 0.0)}, "domain"),
        ({"eps_x": 2.0}, "eps_x"),
        ({"layer_eps": {"a": -1.0}}, "layer_eps"),
        ({"layers": ["a"], "layer_eps": {"b": 0.1}}, "layer_eps"),
        ({"weight_ball": "spectral"}, "weight_ball"),
        ({"scope": "global"}, "scope"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as info:
        ThreatModel(**kwargs)
    message = describe(info.value)
    assert field in message
    assert "\n" not in message


def test_frozen_and_derived():
    threat = ThreatModel(eps_x=0.1, eps_w=0.01, eps_b=0.02, layer_eps={"2": 0.5})
    with pytest.raises(ValidationError):
        threat.eps_x = 0.2
    assert threat.kind == "joint"
    assert threat.input_only().kind == "input"
    assert threat.weight_only().kind == "weight"
    assert threat.input_only().eps_b == 0 and threat.input_only().layer_eps == ()
    assert threat.eps_w_for("2") == 0.5 and threat.eps_w_for("4") == 0.01
    assert threat.with_scope("shared").scope.value == "shared"
    assert ThreatModel().kind == "none"
    assert threat.describe()["layer_eps"] == {"2": 0.5}


def test_weight_layers_selection(small_mlp):
    assert [n for n, _ in ThreatModel(eps_w=0.1).weight_layers(small_mlp)] == ["2", "4", "6"]
    assert [n for n, _ in ThreatModel(eps_w=0.1, layers=["4"]).weight_layers(small_mlp)] == ["4"]
    assert ThreatModel(eps_x=0.1).weight_layers(small_mlp) == []
    with pytest.raises(ValueError, match="does not have"):
        ThreatModel(eps_w=0.1, layers=["9"]).weight_layers(small_mlp)
    with pytest.raises(ValueError, match="ReLU"):
        ThreatModel(eps_w=0.1, layers=["3"]).weight_layers(small_mlp)


def test_radii():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    rel = ThreatModel(eps_w=0.1, weight_mode="relative")
    assert torch.allclose(rel.weight_radius("l", w), 0.1 * w.abs())
    assert float(rel.operator_radius("l", w)) == pytest.approx(0.3)
    absolute = ThreatModel(eps_w=0.1, eps_b=0.2)
    assert torch.equal(absolute.weight_radius("l", w), torch.full_like(w, 0.1))
    assert torch.equal(absolute.bias_radius(torch.ones(2)), torch.full((2,), 0.2))
    assert ThreatModel(eps_w=0.1).bias_radius(torch.ones(2)) is None


def test_input_bounds_clip_to_domain_and_reject_outside():
    threat = ThreatModel(eps_x=0.1)
    lb, ub = threat.input_bounds(torch.tensor([0.0, 0.5, 1.0]))
    assert lb.tolist() == pytest.approx([0.0, 0.4, 0.9]) and ub.tolist() == pytest.approx([0.1, 0.6, 1.0])
    with pytest.raises(ValueError, match="outside the domain"):
        threat.input_bounds(torch.tensor([255.0]))
