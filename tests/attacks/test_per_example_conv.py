"""The per-example convolution op (`attacks/per_example_conv.py`) against the plain per-example definition, and
the joint attack through it against the attack through generic autograd (the previous path)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nonsingular import PGD, ThreatModel, check_attack
from nonsingular.attacks import per_example_conv, perturbation
from nonsingular.attacks.perturbation import build_weight_blocks, installed, layer_paths

#: (in, out, side, stride, padding, dilation, groups, kernel): SmallCNN's and LeNet's layers, and geometries
#: whose transposed convolution needs output padding (stride 2 and 3 with rows dropped) or several groups.
#: Stride 1 with one group takes the unfolded products, the others the grouped convolution.
GEOMETRIES = [
    (1, 16, 28, 1, 1, 1, 1, 3),
    (16, 32, 28, 2, 1, 1, 1, 3),
    (1, 6, 28, 1, 2, 1, 1, 5),
    (6, 16, 14, 1, 2, 1, 1, 5),
    (6, 16, 12, 1, 0, 1, 1, 5),
    (3, 5, 9, 1, 2, 2, 1, 3),
    (4, 8, 11, 2, 2, 2, 2, 3),
    (4, 6, 10, 3, 0, 1, 2, 2),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_matches_one_convolution_per_example(geometry, bias):
    c_in, c_out, side, stride, pad, dil, groups, k = geometry
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, dilation=dil, groups=groups, bias=bias).double()
    n = 5
    h = torch.randn(n, c_in, side, side, dtype=torch.float64, requires_grad=True)
    delta = (1e-2 * torch.randn(n, *conv.weight.shape, dtype=torch.float64)).requires_grad_()
    out = per_example_conv.per_example_conv2d(conv, h, delta)
    ref = torch.cat(
        [F.conv2d(h[i : i + 1], conv.weight + delta[i], conv.bias, stride, pad, dil, groups) for i in range(n)]
    )
    # float64: only the order of the sums differs (layouts), so agreement to ~1e-13 relative.
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    wrt = [h, delta, conv.weight] + ([conv.bias] if bias else [])
    for got, want in zip(torch.autograd.grad(out, wrt, g), torch.autograd.grad(ref, wrt, g), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _cnn():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 10),
    ).eval()


def _generic(monkeypatch):
    """The path before the op: grouped convolution by autograd, the module's own forward run and discarded."""
    monkeypatch.setattr(per_example_conv, "supports", lambda _module: False)
    monkeypatch.setattr(perturbation.WeightBlock, "replaces_output", lambda _self: False)


@pytest.mark.parametrize(
    "threat",
    [
        {"eps_x": 0.05, "eps_w": 0.01},
        {"eps_x": 0.05, "eps_w": 0.05, "weight_mode": "relative", "eps_b": 0.01},
        {"eps_x": 0.05, "eps_w": 0.05, "weight_ball": "operator"},
    ],
)
def test_joint_pgd_iterates_match_the_generic_path(threat, monkeypatch):
    model = _cnn().double()
    x = torch.rand(12, 1, 14, 14, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    tm = ThreatModel(**threat)
    attack = PGD(steps=5, batch_size=12)
    fast = attack(model, x, y, tm)
    assert set(fast.paths.values()) >= {"explicit"}
    with monkeypatch.context() as m:
        _generic(m)
        slow = attack(model, x, y, tm)
    # float64: the gradients differ by ~1e-16 relative (summation order), far from flipping a sign step, so the
    # iterates, the kept points and the materialised kernels agree to the rounding of the logits.
    torch.testing.assert_close(fast.x_adv, slow.x_adv, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.logits, slow.logits, rtol=1e-10, atol=1e-10)
    slow_weights = slow.perturbed_weights(0, 12)
    for name, w_fast in fast.perturbed_weights(0, 12).items():
        torch.testing.assert_close(w_fast, slow_weights[name], rtol=0, atol=1e-12)
    check = check_attack(model, x, y, fast)
    assert check.passed, check.problems


def test_training_through_frozen_blocks_gets_the_weight_gradients(monkeypatch):
    """Training differentiates W and b through the installed perturbation (`training.objectives`)."""
    model = _cnn().double()
    x = torch.rand(6, 1, 14, 14, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.arange(6)
    threat = ThreatModel(eps_x=0.05, eps_w=0.01, eps_b=0.01)
    blocks = build_weight_blocks(model, threat, layer_paths(model, threat, x[:2]), 6)
    for blk in blocks:
        blk.random_start(torch.Generator().manual_seed(4))

    def grads():
        model.zero_grad()
        with installed(blocks):
            F.cross_entropy(model(x), y).backward()
        return [p.grad.clone() for p in model.parameters()]

    fast = grads()
    with monkeypatch.context() as m:
        _generic(m)
        slow = grads()
    for got, want in zip(fast, slow, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_an_attacks_blocks_leave_the_layer_parameters_without_gradients():
    """Blocks built with differentiates_parameters=False (an attack's) give D the same gradient and W, b none."""
    model = _cnn().double()
    x = torch.rand(6, 1, 14, 14, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.arange(6)
    threat = ThreatModel(eps_x=0.05, eps_w=0.01)
    paths = layer_paths(model, threat, x[:2])

    def grads(differentiates):
        blocks = build_weight_blocks(model, threat, paths, 6, differentiates)
        for blk in blocks:
            blk.random_start(torch.Generator().manual_seed(4))
        model.zero_grad()
        variables = [v.requires_grad_() for blk in blocks for v in blk.variables]
        with installed(blocks):
            F.cross_entropy(model(x), y).backward()
        return [v.grad for v in variables], [p.grad for p in (model[0].weight, model[0].bias)]

    with_params, params = grads(True)
    without, none = grads(False)
    assert all(p is not None for p in params) and all(p is None for p in none)
    for got, want in zip(without, with_params, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
