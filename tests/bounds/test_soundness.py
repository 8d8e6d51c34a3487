"""Try hard to break every bound: random small networks, inputs and threats (every option), against checked
PGD attacks (margin and cross-entropy) and random vertices of the threat set. A failure here is a release
blocker: some point of the threat set does worse than a bound says it can.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from nonsingular import MLP, ThreatModel
from nonsingular.bounds import margin_bounds, norm_bounds
from nonsingular.models import Normalize
from tests.support.threat_points import attacked_logits, margins, tolerance, vertex_logits

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def threats(draw: st.DrawFn, layer_names: list[str]) -> ThreatModel:
    """Any threat: both balls and modes, per-layer eps, layer subsets, bias radii, two domains."""
    relative = draw(st.booleans())
    eps_w_values = [0.0, 0.01, 0.1, 0.5] if relative else [0.0, 0.002, 0.02, 0.1]
    layers = draw(st.none() | st.lists(st.sampled_from(layer_names), min_size=1, unique=True))
    overridable = layer_names if layers is None else layers
    overrides = draw(st.lists(st.sampled_from(overridable), unique=True))
    return ThreatModel(
        eps_x=draw(st.sampled_from([0.0, 0.01, 0.05, 0.2])),
        eps_w=draw(st.sampled_from(eps_w_values)),
        weight_ball=draw(st.sampled_from(["elementwise", "operator"])),
        weight_mode="relative" if relative else "absolute",
        eps_b=draw(st.sampled_from([0.0, 0.0, 0.01, 0.1])),
        layers=layers,
        layer_eps={name: draw(st.sampled_from(eps_w_values)) for name in overrides},
        domain=draw(st.sampled_from([(0.0, 1.0), (-1.0, 1.0)])),
    )


def _inputs(seed: int, n: int, shape: tuple[int, ...], domain: tuple[float, float]) -> torch.Tensor:
    """Random inputs in the domain, some coordinates exactly on its edges (where the input box is clipped)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = domain
    x = lo + (hi - lo) * torch.rand((n, *shape), generator=g, dtype=torch.float64)
    edge = torch.rand(x.shape, generator=g) < 0.2
    return torch.where(edge, torch.where(torch.rand(x.shape, generator=g) < 0.5, lo, hi), x).to(torch.float64)


def _labels(model: nn.Module, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mostly the model's own predictions (so certificates happen), the last one a wrong label."""
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[-1] = (y[-1] + 1) % num_classes
    return y


def _check_sound(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, methods: list[str]) -> None:
    """No point of the threat set has a margin below a bound; certified examples survive every attack."""
    found = [attacked_logits(model, x, y, threat, "margin", steps=25)]
    found.append(attacked_logits(model, x, y, threat, "ce", steps=15))
    found += list(vertex_logits(model, x, threat, n_vertices=12))
    found_margins = margins(torch.stack(found), y)  # (points, N, K)
    found_loss = torch.stack([F.cross_entropy(z, y, reduction="none") for z in found])
    with torch.no_grad():
        clean = model(x)
    clean_loss = F.cross_entropy(clean, y, reduction="none")
    lowers = {}
    for method in methods:
        with torch.no_grad():
            bounds = margin_bounds(model, x, y, threat, method, alpha_steps=3)
        lowers[method] = bounds.lower
        tol = tolerance(bounds.lower, found_margins)
        gap = (bounds.lower[None] - found_margins).max()
        assert gap <= tol, f"{method}: a point of the threat set has a margin {float(gap):.3g} below the bound"
        broken = bounds.certified & (found_margins.masked_fill(found_margins == 0, 1).amin(dim=(0, 2)) <= 0)
        assert not broken.any(), f"{method}: certified examples {broken.nonzero().flatten().tolist()} were broken"
        assert not (bounds.certified & (clean.argmax(1) != y)).any()
        loss_gap = (found_loss - clean_loss - bounds.loss_increase_bound()).max()
        assert loss_gap <= tolerance(found_loss), f"{method}: loss increase above its bound by {float(loss_gap):.3g}"
    if "crown" in lowers:
        assert (lowers["crown"] >= lowers["ibp"] - tolerance(lowers["ibp"])).all(), "CROWN looser than IBP"
    if "alpha-crown" in lowers:
        assert (lowers["alpha-crown"] >= lowers["crown"] - tolerance(lowers["crown"])).all(), "alpha looser than CROWN"
    with torch.no_grad():
        norm = norm_bounds(model, x, threat, y)
    logit_change = (torch.stack(found) - clean).abs().amax(dim=(0, 2))
    assert (logit_change <= norm.logit_change + tolerance(logit_change)).all(), "Theorem 2 logit bound broken"
    loss_change = (found_loss - clean_loss).abs().amax(dim=0)
    assert (loss_change <= norm.loss_change + tolerance(loss_change)).all(), "Theorem 2 loss bound broken"


@SETTINGS
@given(data=st.data())
def test_mlp_bounds_are_sound(data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**16))
    shape = data.draw(st.sampled_from([(3,), (1, 2, 3), (2, 2)]))
    widths = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    classes = data.draw(st.integers(2, 4))
    torch.manual_seed(seed)
    model = MLP(shape, widths, classes, mean=data.draw(st.sampled_from([0.0, 0.4])), std=0.6).double().eval()
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear):
                module.weight.mul_(data.draw(st.sampled_from([0.5, 1.0, 3.0])))
                module.bias.normal_(0, 0.3)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    threat = data.draw(threats(names))
    x = _inputs(seed, 6, shape, threat.domain)
    _check_sound(model, x, _labels(model, x, classes), threat, ["norm", "ibp", "crown", "alpha-crown"])


def _convnet(data: st.DataObject, seed: int) -> tuple[nn.Sequential, tuple[int, ...]]:
    one_d = data.draw(st.booleans())
    conv, pools = (
        (nn.Conv1d, [nn.Identity(), nn.MaxPool1d(2), nn.AvgPool1d(2)])
        if one_d
        else (
            nn.Conv2d,
            [nn.Identity(), nn.MaxPool2d(2), nn.AvgPool2d(2)],
        )
    )
    shape = (2, 9) if one_d else (1, 7, 7)
    c1, c2 = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    torch.manual_seed(seed)
    features = nn.Sequential(
        Normalize(0.3, 0.7),
        conv(shape[0], c1, data.draw(st.integers(1, 3)), stride=data.draw(st.integers(1, 2)), padding=1),
        nn.ReLU(),
        data.draw(st.sampled_from(pools)),
        conv(c1, c2, 2, padding=data.draw(st.integers(0, 1)), bias=data.draw(st.booleans())),
        nn.ReLU(),
        nn.Flatten(),
    )
    with torch.no_grad():
        n_flat = features(torch.zeros(1, *shape)).shape[1]
    return nn.Sequential(features, nn.Linear(n_flat, 3)).double().eval(), shape


@settings(SETTINGS, max_examples=25)
@given(data=st.data())
def test_convnet_bounds_are_sound(data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**16))
    model, shape = _convnet(data, seed)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)]
    threat = data.draw(threats(names))
    x = _inputs(seed, 4, shape, threat.domain)
    _check_sound(model, x, _labels(model, x, 3), threat, ["norm", "ibp", "crown", "alpha-crown"])
