"""Contract of every attack variant: inside the threat set, no better than clean, checker agrees."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from nonsingular import FGSM, PGD, ThreatModel, TorchattacksAdapter, check_attack
from nonsingular.models import Normalize
from tests.support.attack_reference import explicit_joint_pgd

THREATS = {
    "input": {"eps_x": 0.05},
    "weight": {"eps_w": 0.004},
    "joint": {"eps_x": 0.03, "eps_w": 0.002},
    "joint-relative-bias": {"eps_x": 0.03, "eps_w": 0.05, "weight_mode": "relative", "eps_b": 0.02},
    "joint-operator": {"eps_x": 0.03, "eps_w": 0.05, "weight_ball": "operator"},
    "joint-operator-relative": {
        "eps_x": 0.03,
        "eps_w": 0.02,
        "weight_ball": "operator",
        "weight_mode": "relative",
    },
    "layer-subset": {"eps_x": 0.03, "eps_w": 0.01, "layers": ["4"], "layer_eps": {"4": 0.02}},
}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _no_hooks(model):
    return all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("scope", ["per-example", "shared"])
@pytest.mark.parametrize("name", list(THREATS))
def test_attack_contract(small_mlp, batch, name, scope):
    x, y = batch
    threat = ThreatModel(**THREATS[name], scope=scope)
    before = _state(small_mlp)
    small_mlp.train()
    result = PGD(steps=5, restarts=2)(small_mlp, x, y, threat)
    assert small_mlp.training, "the attack must restore the model's mode"
    small_mlp.eval()
    assert _no_hooks(small_mlp)
    assert all(torch.equal(before[k], v) for k, v in small_mlp.state_dict().items()), "weights were modified"

    check = check_attack(small_mlp, x, y, result)
    assert check.passed, check.problems
    # The attack ascends the loss: every example it leaves correct ends (after its best restart) at a loss no
    # lower than the clean one; a shared perturbation raises the batch's mean loss (single examples may drop).
    with torch.no_grad():
        clean_loss = F.cross_entropy(small_mlp(x), y, reduction="none")
    attacked_loss = F.cross_entropy(check.logits, y, reduction="none")
    if scope == "per-example":
        assert bool((attacked_loss >= clean_loss)[check.correct].all()), "an attacked point has a lower loss"
    else:
        assert float(attacked_loss.mean()) > float(clean_loss.mean())
    assert check.max_logit_gap < 1e-4
    ours = result.logits.argmax(1)
    disagree = ours != check.logits.argmax(1)
    top2 = result.logits.topk(2, dim=1).values
    assert bool(((top2[:, 0] - top2[:, 1])[disagree] < 1e-4).all()), "checker and attack disagree"
    expected_path = "shared" if scope == "shared" else "lemma1"
    assert set(result.paths.values()) <= {expected_path}
    if threat.perturbs_weights:
        weights = result.perturbed_weights(3, 7)
        for pname, value in weights.items():
            shape = dict(small_mlp.named_parameters())[pname].shape
            assert value.shape == (shape if scope == "shared" else (4, *shape))


def test_attack_weakens_model(small_mlp, batch):
    x, y = batch
    clean = (small_mlp(x).argmax(1) == y).float().mean()
    result = PGD(steps=10)(small_mlp, x, y, ThreatModel(eps_x=0.05, eps_w=0.002))
    assert check_attack(small_mlp, x, y, result).accuracy < clean - 0.2


def test_lemma1_materialised_weights_reproduce_logits(small_mlp, batch):
    x, y = batch
    for kwargs in (THREATS["joint"], THREATS["joint-relative-bias"], THREATS["joint-operator"]):
        result = PGD(steps=3)(small_mlp, x, y, ThreatModel(**kwargs))
        assert set(result.paths.values()) == {"lemma1"}
        params = dict(small_mlp.named_parameters())
        weights = result.perturbed_weights()
        for i in range(len(x)):
            p = {**params, **{k: v[i] for k, v in weights.items()}}
            logits = functional_call(small_mlp, p, (result.x_adv[i : i + 1],))[0]
            assert torch.allclose(logits, result.logits[i], atol=1e-4, rtol=0)


def test_fast_joint_attack_at_least_as_strong_as_explicit_weights(small_mlp, digits):
    x, y = digits.x_test[:64], digits.y_test[:64]
    eps_x, eps_w, steps = 0.03, 0.002, 10
    reference = explicit_joint_pgd(small_mlp, x, y, eps_x, eps_w, steps)
    result = PGD(steps=steps, random_start=False)(small_mlp, x, y, ThreatModel(eps_x=eps_x, eps_w=eps_w))
    ours = check_attack(small_mlp, x, y, result).accuracy
    assert 0 < reference < 1, "pick epsilons where the reference attack is neither trivial nor hopeless"
    assert ours <= reference + 1 / len(y)


def test_input_pgd_matches_reference_loop(small_mlp, batch):
    x, y = batch
    eps, steps = 0.05, 7
    lb, ub = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    x_adv, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool)
    for step in range(steps + 1):
        x_adv.requires_grad_(True)
        logits = small_mlp(x_adv)
        fooled |= logits.argmax(1) != y
        if step == steps:
            break
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), [x_adv])
        x_adv = torch.min(torch.max(x_adv.detach() + 2.5 / steps * eps * g.sign(), lb), ub)
    result = PGD(steps=steps, random_start=False)(small_mlp, x, y, ThreatModel(eps_x=eps))
    assert torch.equal(result.logits.argmax(1) != y, fooled)


def test_per_example_at_most_shared(small_mlp, digits):
    x, y = digits.x_test[:120], digits.y_test[:120]
    threat = ThreatModel(eps_x=0.02, eps_w=0.002)
    accs = {}
    for scope in ("per-example", "shared"):
        result = PGD(steps=10)(small_mlp, x, y, threat.with_scope(scope))
        accs[scope] = check_attack(small_mlp, x, y, result).accuracy
    assert accs["per-example"] <= accs["shared"]


def test_shared_scope_spans_batches(small_mlp, digits):
    x, y = digits.x_test[:50], digits.y_test[:50]
    result = PGD(steps=4, batch_size=16)(small_mlp, x, y, ThreatModel(eps_w=0.004, scope="shared"))
    check = check_attack(small_mlp, x, y, result)
    assert check.passed and check.max_logit_gap < 1e-4


def _conv_net():
    torch.manual_seed(1)
    return nn.Sequential(
        Normalize(0.3, 0.4),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(36, 10),
    ).eval()


class TwiceApplied(nn.Module):
    """A Linear applied twice per example: Lemma 1 must not be used for it."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        h = x.flatten(1)
        return self.head(torch.relu(self.inner(torch.relu(self.inner(h)))))


@pytest.mark.parametrize("scope", ["per-example", "shared"])
def test_explicit_paths_verify(batch, scope):
    x, y = batch
    for model, explicit in ((_conv_net(), {"1", "3"}), (TwiceApplied().eval(), {"inner"})):
        threat = ThreatModel(eps_x=0.03, eps_w=0.01, eps_b=0.01, scope=scope)
        result = PGD(steps=3, memory_budget_mb=0.05)(model, x, y, threat)
        want = "shared" if scope == "shared" else "explicit"
        assert {k for k, v in result.paths.items() if v == want} >= explicit
        check = check_attack(model, x, y, result, chunk_size=7)
        assert check.passed, check.problems
        assert check.max_logit_gap < 1e-4


class SubclassConv(nn.Conv2d):
    """A Conv2d subclass: the hook keeps its output and adds the perturbation's share (it cannot know that the
    forward is the plain convolution)."""


@pytest.mark.parametrize("scope", ["per-example", "shared"])
def test_subclassed_layers_take_the_additive_path(batch, scope, monkeypatch):
    """Plain layers apply W + D in one op; a subclass takes out + D h. Both give the same attack (to float
    rounding) and both check_attack."""
    from nonsingular.attacks import per_example_conv, perturbation

    x, y = batch
    plain = _conv_net()
    sub = _conv_net()
    sub[1] = SubclassConv(1, 4, 3, padding=1)
    sub[1].load_state_dict(plain[1].state_dict())
    threat = ThreatModel(eps_x=0.03, eps_w=0.01, eps_b=0.01, scope=scope)
    calls = []
    applied = perturbation._apply_weight if scope == "shared" else perturbation._apply_weight_per_example

    def spy(module, h, weight):
        calls.append(type(module))
        return applied(module, h, weight)

    monkeypatch.setattr(perturbation, "_apply_weight" if scope == "shared" else "_apply_weight_per_example", spy)
    conv_op = per_example_conv.per_example_conv2d

    def spy_conv(module, h, delta, **kwargs):  # per-example plain 2-d convolutions take the dedicated op
        calls.append(type(module))
        return conv_op(module, h, delta, **kwargs)

    monkeypatch.setattr(per_example_conv, "per_example_conv2d", spy_conv)
    results = [PGD(steps=3, seed=2)(m, x, y, threat) for m in (plain, sub)]
    assert SubclassConv in calls and nn.Conv2d in calls
    for model, result in zip((plain, sub), results, strict=True):
        check = check_attack(model, x, y, result)
        assert check.passed, check.problems
    torch.testing.assert_close(results[0].logits, results[1].logits, rtol=1e-4, atol=1e-4)


def test_fgsm_and_adapter(small_mlp, batch):
    x, y = batch
    threat = ThreatModel(eps_x=0.05)
    atk = TorchattacksAdapter(FGSM(), small_mlp, threat)
    x_adv = atk(x, y)
    assert x_adv.shape == x.shape and atk.last_result is not None
    assert float((x_adv - x).abs().max()) <= 0.05 + 1e-7
    assert "steps=1" in repr(FGSM())


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"restarts": 0}, {"rel_stepsize": -1.0}, {"loss": "l2"}])
def test_bad_attack_config(kwargs):
    with pytest.raises(ValueError):
        PGD(**kwargs)


def _fooled(model, x, y, result):
    """(N,) mask of the examples the result misclassifies, as the independent checker recomputes it."""
    check = check_attack(model, x, y, result)
    assert check.passed, check.problems
    return ~check.correct


def test_margin_loss_finds_errors_where_cross_entropy_saturates(small_mlp, batch):
    """With the last layer scaled by 2**14 the logits scale exactly (a power of two) and the softmax saturates:
    cross-entropy's gradient underflows to zero on confidently classified examples, so PGD with it finds nothing
    beyond the clean errors. The margin max_k z_k - z_y only scales, its sign steps are unchanged: it finds
    bit for bit the points it finds on the unscaled model, among them every error cross-entropy finds there."""
    x, y = batch
    scaled = copy.deepcopy(small_mlp)
    with torch.no_grad():
        scaled[-1].weight.mul_(2.0**14)
        scaled[-1].bias.mul_(2.0**14)
    threat = ThreatModel(eps_x=0.05, eps_w=0.001, layers=["2", "4"])  # the scaled layer itself is not perturbed
    with torch.no_grad():
        clean_wrong = small_mlp(x).argmax(1) != y
    ce, margin = PGD(steps=10, loss="ce"), PGD(steps=10, loss="margin")
    ce_plain, margin_plain = ce(small_mlp, x, y, threat), margin(small_mlp, x, y, threat)
    ce_scaled, margin_scaled = ce(scaled, x, y, threat), margin(scaled, x, y, threat)
    fooled_ce = _fooled(small_mlp, x, y, ce_plain)
    assert int(fooled_ce.sum()) >= int(clean_wrong.sum()) + 4  # cross-entropy works on the unscaled model
    assert torch.equal(_fooled(scaled, x, y, ce_scaled), clean_wrong)  # and finds nothing once it saturates
    assert torch.equal(margin_scaled.x_adv, margin_plain.x_adv)
    fooled_margin = _fooled(scaled, x, y, margin_scaled)
    assert torch.equal(fooled_margin, _fooled(small_mlp, x, y, margin_plain))
    assert not (fooled_ce & ~fooled_margin).any(), "an error cross-entropy finds that the margin loss misses"


@pytest.mark.parametrize(
    "threat",
    [
        ThreatModel(eps_x=0.05, eps_w=0.002),  # the fused MLP path
        ThreatModel(eps_x=0.05, eps_w=0.05, weight_ball="operator"),  # the hooked autograd path
    ],
    ids=["fused", "autograd"],
)
def test_attack_inside_no_grad_finds_the_errors_of_a_normal_call(small_mlp, batch, threat):
    """Callers evaluate under torch.no_grad(); the attack enables gradients itself and finds, bit for bit, the
    points (inputs and weights) a normal call finds: errors beyond the clean ones, confirmed by the checker."""
    x, y = batch
    attack = PGD(steps=5, seed=2)
    normal = attack(small_mlp, x, y, threat)
    with torch.no_grad():
        quiet = attack(small_mlp, x, y, threat)
        clean_wrong = small_mlp(x).argmax(1) != y
    assert torch.equal(quiet.x_adv, normal.x_adv) and torch.equal(quiet.logits, normal.logits)
    got, want = quiet.perturbed_weights(), normal.perturbed_weights()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    fooled = _fooled(small_mlp, x, y, quiet)
    assert int(fooled.sum()) >= int(clean_wrong.sum()) + 3


@pytest.mark.parametrize("eps_w", [0.0, 0.01])
def test_per_example_result_independent_of_batching(small_mlp, digits, eps_w):
    """Random starts are keyed by global example index: splitting the examples (into batches, or into calls
    with first_index as a rank's shard does) gives each example the same attack, bit for bit."""
    x, y = digits.x_test[:100], digits.y_test[:100]
    threat = ThreatModel(eps_x=0.05, eps_w=eps_w)
    whole = PGD(steps=5, seed=3, batch_size=100)(small_mlp, x, y, threat)
    batched = PGD(steps=5, seed=3, batch_size=30)(small_mlp, x, y, threat)
    attack = PGD(steps=5, seed=3, batch_size=100)
    parts = [attack(small_mlp, x[a:b], y[a:b], threat, first_index=a) for a, b in ((0, 37), (37, 100))]
    for other in (batched.x_adv, torch.cat([p.x_adv for p in parts])):
        torch.testing.assert_close(other, whole.x_adv, rtol=0, atol=1e-6)


def test_relu_fed_layers_skip_abs_without_changing_the_attack(small_mlp, batch, monkeypatch):
    """Layers fed by a ReLU use sum(h) for ||h||_1: the attack is bit-for-bit the one with abs()."""
    from nonsingular.attacks import perturbation

    x, y = batch
    threat = ThreatModel(eps_x=0.05, eps_w=0.002)
    assert perturbation._fed_by_relu(small_mlp) == {"4", "6"}
    fast = PGD(steps=5, seed=1)(small_mlp, x, y, threat)
    monkeypatch.setattr(perturbation, "_fed_by_relu", lambda model: set())
    plain = PGD(steps=5, seed=1)(small_mlp, x, y, threat)
    assert torch.equal(fast.x_adv, plain.x_adv) and torch.equal(fast.logits, plain.logits)
