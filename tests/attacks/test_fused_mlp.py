"""The fused MLP path of the attack loop gives exactly the numbers of the hooked autograd path."""

import pytest
import torch
from torch import nn

from nonsingular import MLP, PGD, ThreatModel, check_attack
from nonsingular.attacks import APGD
from nonsingular.attacks.fused_mlp import plan
from nonsingular.attacks.perturbation import _Lemma1Term, build_weight_blocks, layer_paths

FUSED_THREATS = {
    "input": {"eps_x": 0.05},
    "joint": {"eps_x": 0.03, "eps_w": 0.004},
    "weight-bias": {"eps_w": 0.004, "eps_b": 0.01},
    "layer-subset": {"eps_x": 0.03, "eps_w": 0.01, "layers": ["4"], "layer_eps": {"4": 0.02}},
    "channel-eps": {"eps_x": 0.03, "eps_w": 0.002, "channel_eps": {"2": [0.001 * (1 + i % 3) for i in range(32)]}},
}
ATTACKS = {
    "pgd-restarts-batches": PGD(steps=6, restarts=2, batch_size=7),
    "pgd-margin-no-start": PGD(steps=5, loss="margin", random_start=False),
    "pgd-kl-clean": PGD(steps=4, loss="kl-clean"),
    "apgd": APGD(steps=12),
}


def _generic(model: nn.Module):
    """The same model forced onto the generic path: a forward hook (doing nothing) rules the fused plan out."""
    return model.register_forward_hook(lambda *_: None)


@pytest.mark.parametrize("attack_name", list(ATTACKS))
@pytest.mark.parametrize("threat_name", list(FUSED_THREATS))
def test_fused_equals_autograd(small_mlp, batch, threat_name, attack_name):
    x, y = batch
    x, y = x[:20], y[:20]
    threat = ThreatModel(**FUSED_THREATS[threat_name])
    attack = ATTACKS[attack_name]
    assert plan(small_mlp, layer_paths(small_mlp, threat, x[:2]), threat, x[:1]) is not None
    fused = attack(small_mlp, x, y, threat)
    handle = _generic(small_mlp)
    try:
        assert plan(small_mlp, layer_paths(small_mlp, threat, x[:2]), threat, x[:1]) is None
        reference = attack(small_mlp, x, y, threat)
    finally:
        handle.remove()
    assert torch.equal(fused.x_adv, reference.x_adv)
    assert torch.equal(fused.logits, reference.logits)
    if threat.perturbs_weights:
        got, want = fused.perturbed_weights(0, len(x)), reference.perturbed_weights(0, len(x))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in got)
    check = check_attack(small_mlp, x, y, fused)
    assert check.passed, check


@pytest.mark.parametrize(
    "threat",
    [
        ThreatModel(eps_x=0.03, eps_w=0.05, weight_mode="relative"),
        ThreatModel(eps_x=0.03, eps_w=0.05, weight_ball="operator"),
        ThreatModel(eps_x=0.03, eps_w=0.004, scope="shared"),
    ],
    ids=["relative", "operator", "shared"],
)
def test_plan_declines_unfusable_threats(small_mlp, batch, threat):
    x = batch[0][:2]
    assert plan(small_mlp, layer_paths(small_mlp, threat, x), threat, x[:1]) is None


def test_plan_declines_other_architectures():
    threat = ThreatModel(eps_x=0.03, eps_w=0.004)
    x = torch.rand(2, 6)
    for model in (
        nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)),
        nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.ReLU(), nn.Linear(5, 3)),
        nn.Sequential(nn.Linear(6, 5), nn.ReLU()),
    ):
        assert plan(model, layer_paths(model, threat, x), threat, x[:1]) is None
    plain = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    assert plan(plain, layer_paths(plain, threat, x), threat, x[:1]) is not None
    image = MLP((1, 2, 3), (5,), 3)
    assert plan(image, layer_paths(image, threat, x.view(2, 1, 2, 3)), threat, x[:1].view(1, 1, 2, 3)) is not None


@pytest.mark.parametrize("nonneg", [True, False])
@pytest.mark.parametrize("channels", [False, True])
@pytest.mark.parametrize("eps_b", [0.0, 0.01])
def test_lemma1_term_gradient_matches_autograd(nonneg, channels, eps_b):
    torch.manual_seed(0)
    layer = nn.Linear(7, 5).double()
    channel_eps = {"0": [0.01 * (i + 1) for i in range(5)]} if channels else {}
    threat = ThreatModel(eps_x=0.0, eps_w=0.02, eps_b=eps_b, channel_eps=channel_eps)
    model = nn.Sequential(layer)
    paths = layer_paths(model, threat, torch.rand(2, 7, dtype=torch.float64))
    (block,) = build_weight_blocks(model, threat, paths, 4)
    block.input_nonnegative = nonneg
    block.t.copy_(torch.rand(4, 5, dtype=torch.float64) * 2 - 1)
    h = torch.randn(4, 7, dtype=torch.float64)
    h = (h.relu() if nonneg else h).requires_grad_()
    out = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    t = block.t.requires_grad_()
    g = torch.randn(4, 5, dtype=torch.float64)
    fused = _Lemma1Term.apply(out, h, t, block)
    got = torch.autograd.grad((fused * g).sum(), [out, h, t])
    l1 = h.sum(1, keepdim=True) if nonneg else h.abs().sum(1, keepdim=True)
    scale = block.uniform_eps if block.uniform_eps is not None else block.row_eps
    radius = l1 * scale + (block.bias_rho if block.bias_rho is not None else 0)
    plain = torch.addcmul(out, t, radius)
    want = torch.autograd.grad((plain * g).sum(), [out, h, t])
    assert torch.allclose(fused, plain, rtol=0, atol=1e-15)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
