"""Conv nets: shapes, specs, user models with safetensors weights, and joint attacks with explicit conv kernels."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from nonsingular import PGD, ThreatModel, check_attack
from nonsingular.attacks.weight_ball import settle_operator_rounding
from nonsingular.datasets import Dataset
from nonsingular.models import LeNet, SmallCNN, load_user_model, load_weights
from nonsingular.models import architectures as models_module

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
ARCHS = {
    "cnn": {},
    "lenet-avg": {"pool": "avg"},
    "lenet-max": {"pool": "max"},
    "lenet-stride": {"pool": "stride"},
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_shapes_from_spec(arch, shape):
    name = arch.split("-")[0]
    spec = {"name": name, "input_shape": list(shape), "num_classes": 10, "mean": [0.5] * shape[0], "std": [0.25]}
    model = models_module.build_model({**spec, **ARCHS[arch]})
    assert isinstance(model, nn.Sequential)
    assert model(torch.rand(3, *shape)).shape == (3, 10)
    assert type(model).forward is nn.Sequential.forward, "bounds follow plain Sequentials only"


@pytest.mark.parametrize(
    ("factory", "kwargs", "message"),
    [
        (SmallCNN, {"input_shape": (64,)}, "needs image inputs of shape"),
        (LeNet, {"input_shape": (1, 2, 2)}, "too small"),
        (LeNet, {"input_shape": (1, 8, 8), "pool": "median"}, "pool must be one of"),
        (SmallCNN, {"input_shape": (1, 8, 8), "channels": (4,)}, "two positive channel counts"),
        (SmallCNN, {"input_shape": (1, 8, 8), "num_classes": 1}, "num_classes >= 2"),
    ],
)
def test_bad_arguments(factory, kwargs, message):
    with pytest.raises(ValueError, match=message):
        factory(**{"num_classes": 10, **kwargs})


# ------------------------------------------------------------------------------------------------ user models

USER_MODULE = """
from torch import nn

def make(width=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))

def not_a_model():
    return 42

VALUE = 3

class Nets:
    @staticmethod
    def tiny():
        return make(4)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's module `usernets_<id>` importable by name, and its file path."""
    name = f"usernets_{id(tmp_path)}"
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, path
    sys.modules.pop(name, None)
    sys.modules.pop(f"_nonsingular_user_{name}", None)


def test_user_model_by_module_and_by_file(user_module, tmp_path):
    name, path = user_module
    model = load_user_model(f"{name}:make", kwargs={"width": 5})
    assert model[1].out_features == 5 and not model.training
    weights = tmp_path / "w.safetensors"
    save_file({k: torch.randn_like(v) for k, v in model.state_dict().items()}, str(weights))
    again = load_user_model(f"{path}:make", weights=weights, kwargs={"width": 5})
    for key, value in load_file(str(weights)).items():
        assert torch.equal(again.state_dict()[key], value)
    assert load_user_model(f"{name}:Nets.tiny")[1].out_features == 4


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nocolon", "expects package.module:factory"),
        (":make", "expects package.module:factory"),
        ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
        ("{name}:missing", "has no attribute 'missing'"),
        ("{name}:VALUE", "'VALUE' is not callable"),
        ("{name}:not_a_model", "returned a int, not a torch.nn.Module"),
        ("/no/such/file.py:make", "file /no/such/file.py not found"),
    ],
)
def test_user_model_errors(user_module, spec, message):
    name, _ = user_module
    with pytest.raises(ValueError, match=message):
        load_user_model(spec.format(name=name))


def test_user_model_factory_type_error(user_module):
    name, _ = user_module
    with pytest.raises(ValueError, match=r"calling make\(\) failed"):
        load_user_model(f"{name}:make", kwargs={"depth": 3})


def test_weights_strict_key_and_shape_check(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "2.bias"}, r"missing 1: 2\.bias"),
        "unexpected": ({**state, "9.weight": torch.zeros(1)}, r"unexpected 1: 9\.weight"),
        "shape": ({**state, "0.weight": torch.zeros(3, 5)}, r"wrong shape 1: 0\.weight \[3, 5\] vs \[3, 4\]"),
        "dataparallel": ({f"module.{k}": v for k, v in state.items()}, r"DataParallel's 'module\.' prefix"),
    }
    for case, (tensors, message) in cases.items():
        path = tmp_path / f"{case}.safetensors"
        save_file(tensors, str(path))
        with pytest.raises(ValueError, match=message) as info:
            load_weights(model, path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_weights(model, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="weights file not found"):
        load_weights(model, tmp_path / "absent.safetensors")
    good = tmp_path / "good.safetensors"
    save_file(state, str(good))
    assert torch.equal(load_weights(model, good)[0].weight, state["0.weight"])


# -------------------------------------------------------------------------------------- attacks on conv nets


@pytest.fixture(scope="module")
def digits_cnn(digits: Dataset) -> SmallCNN:
    """A SmallCNN trained briefly on the 8x8 digits (about a second), so attacks have something to break."""
    torch.manual_seed(0)
    model = SmallCNN(digits.input_shape, 10, digits.mean, digits.std, channels=(4, 8), hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for i in range(0, len(digits.y_train), 128):
            loss = F.cross_entropy(model(digits.x_train[i : i + 128]), digits.y_train[i : i + 128])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


JOINT = {"eps_x": 0.05, "eps_w": 0.01}
CONV_THREATS = {
    "joint": JOINT,
    "joint-bias": {**JOINT, "eps_b": 0.02},
    "joint-relative": {"eps_x": 0.05, "eps_w": 0.05, "weight_mode": "relative"},
}


@pytest.mark.parametrize("scope", ["per-example", "shared"])
@pytest.mark.parametrize("name", list(CONV_THREATS))
def test_joint_attack_on_cnn_verifies(digits_cnn, digits, name, scope):
    x, y = digits.x_test[:24], digits.y_test[:24]
    threat = ThreatModel(**CONV_THREATS[name], scope=scope)
    result = PGD(steps=4)(digits_cnn, x, y, threat)
    check = check_attack(digits_cnn, x, y, result)
    assert check.passed, check.problems
    assert check.max_logit_gap < 1e-4
    clean = (digits_cnn(x).argmax(1) == y).float().mean()
    assert check.accuracy <= clean
    if scope == "per-example":
        assert result.paths == {"1": "explicit", "3": "explicit", "6": "lemma1", "8": "lemma1"}
        assert result.perturbed_weights(2, 5)["3.weight"].shape == (3, *digits_cnn[3].weight.shape)
    else:
        assert set(result.paths.values()) == {"shared"}


def test_joint_attack_weakens_cnn(digits_cnn, digits):
    x, y = digits.x_test[:48], digits.y_test[:48]
    clean = float((digits_cnn(x).argmax(1) == y).float().mean())
    result = PGD(steps=8)(digits_cnn, x, y, ThreatModel(eps_x=0.1, eps_w=0.02))
    check = check_attack(digits_cnn, x, y, result)
    assert check.passed and check.accuracy < clean - 0.2, (clean, check.accuracy)


def test_memory_budget_chunks_explicit_kernels(digits_cnn, digits):
    x, y = digits.x_test[:6], digits.y_test[:6]
    threat = ThreatModel(**JOINT)
    steps_seen: list[int] = []
    # 4 copies x 4 bytes x (4*9 + 8*4*9) kernel entries ~ 5 KB per example: a 0.005 MB budget is one example.
    tiny = PGD(steps=2, memory_budget_mb=0.005)
    result = tiny(digits_cnn, x, y, threat, progress=lambda done, total: steps_seen.append(total))
    assert steps_seen[-1] == 6 * 2, "one batch per example"
    check = check_attack(digits_cnn, x, y, result)
    assert check.passed, check.problems
    assert check.max_logit_gap < 1e-4
    roomy = PGD(steps=2)(digits_cnn, x, y, threat)
    assert check_attack(digits_cnn, x, y, roomy).passed
    assert result.perturbed_weights()["1.weight"].shape == (6, *digits_cnn[1].weight.shape)


def test_grouped_conv1d_and_bias_perturbation_verify():
    """Explicit kernels for groups > 1, dilation, Conv1d and bias perturbations, in both scopes."""
    torch.manual_seed(0)
    image = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, groups=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=8, dilation=2, padding=2, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 36, 10),
    ).eval()
    signal = nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv1d(4, 4, 3, groups=2, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 7, 10),
    ).eval()
    y = torch.arange(6) % 10
    for model, x in ((image, torch.rand(6, 1, 6, 6)), (signal, torch.rand(6, 2, 16))):
        for scope in ("per-example", "shared"):
            threat = ThreatModel(eps_x=0.05, eps_w=0.02, eps_b=0.02, scope=scope)
            result = PGD(steps=3)(model, x, y, threat)
            check = check_attack(model, x, y, result)
            assert check.passed, (scope, check.problems)
            assert check.max_logit_gap < 1e-4
            expected = {"explicit", "lemma1"} if scope == "per-example" else {"shared"}
            assert set(result.paths.values()) == expected


def test_operator_ball_settles_inside_with_large_weights():
    torch.manual_seed(0)
    weight = SmallCNN((1, 8, 8), 10)[1].weight.detach()  # |W| up to 1/3, eps_w = 0.01
    radius = torch.tensor(0.01)
    rows = weight.shape[0]
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(weight.shape, generator=g)
    delta = delta / delta.reshape(rows, -1).abs().sum(1).reshape(rows, 1, 1, 1) * radius  # rows on the sphere
    settled = settle_operator_rounding(weight, weight + delta, radius)
    row_sums = (settled - weight).reshape(rows, -1).abs().sum(dim=1)
    assert bool((row_sums <= radius).all()), float((row_sums - radius).max())
    # Only rounding is settled: a row 1% outside the ball reaches the checker as it is.
    outside = weight + 1.01 * delta
    assert torch.equal(settle_operator_rounding(weight, outside, radius), outside)


@pytest.mark.parametrize("spec", [{"name": "cnn"}, {"name": "lenet"}, {"name": "lenet", "pool": "max"}])
def test_ibp_covers_conv_nets_and_attacks_respect_it(spec):
    """IBP bounds every layer of the conv nets; no checked attack breaks an example IBP certified."""
    from nonsingular.bounds import margin_bounds

    torch.manual_seed(0)
    model = models_module.build_model({**spec, "input_shape": [1, 8, 8], "num_classes": 10}).eval()
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    for eps in (1e-5, 3e-4):
        threat = ThreatModel(eps_x=eps, eps_w=eps / 10)
        certified = margin_bounds(model, x, y, threat, method="ibp").certified
        check = check_attack(model, x, y, PGD(steps=5)(model, x, y, threat))
        assert check.passed
        assert bool((check.correct | ~certified).all()), "an attack broke a certified example"
    assert bool(margin_bounds(model, x, y, ThreatModel(eps_x=1e-5, eps_w=1e-6), method="ibp").certified.any())
