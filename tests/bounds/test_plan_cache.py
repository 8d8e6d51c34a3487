"""The traced-graph cache behind `margin_bounds`: bounds are bit-identical with and without it, follow in-place
and replaced parameters, structural and attribute changes, batch sizes, and the cache never keeps a model alive."""

from __future__ import annotations

import gc
import itertools
import weakref

import pytest
import torch
from torch import nn

from nonsingular import ThreatModel
from nonsingular.bounds import margin_bounds
from nonsingular.bounds.plan_cache import PLAN_CACHE, PlanCache
from nonsingular.models import build_model

THREAT = ThreatModel(eps_x=0.02, eps_w=0.01, eps_b=0.01)


class _Residual(nn.Module):
    """A traced-through forward: a residual block, a shape query, a buffer scale and a Python switch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 6 * 6, 4)
        self.register_buffer("scale", torch.tensor(0.9))
        self.skip = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x * self.scale))
        out = self.conv2(h)
        if self.skip:
            out = out + h
        return self.fc(torch.relu(out).view(x.size(0), -1))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))


def _data(n: int = 3, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g, dtype=dtype), torch.randint(0, 4, (n,), generator=g)


def _bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, cached: bool) -> tuple[torch.Tensor, ...]:
    enabled = PLAN_CACHE.enabled
    PLAN_CACHE.enabled = cached
    try:
        with torch.no_grad():
            b = margin_bounds(model, x, y, THREAT, method, alpha_steps=2)
    finally:
        PLAN_CACHE.enabled = enabled
    return b.lower, b.clean_logits


def _assert_same(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str = "crown") -> torch.Tensor:
    """The cached call (a hit when the plan is warm) equals a fresh trace exactly; returns the bounds."""
    cached, traced = _bounds(model, x, y, method, True), _bounds(model, x, y, method, False)
    for a, b in zip(cached, traced, strict=True):
        assert torch.equal(a, b)
    return cached[0]


@pytest.mark.parametrize("make", [_mlp, _Residual])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
def test_cached_bounds_are_bit_identical_to_traced_ones(make, dtype, method):
    torch.manual_seed(0)
    model = make().eval()
    x, y = _data(dtype=dtype)
    _bounds(model, x, y, method, True)  # warm
    hits = PLAN_CACHE.hits
    _assert_same(model, x, y, method)
    assert PLAN_CACHE.hits == hits + 1 or (dtype == torch.float64 and make is _Residual)


def test_a_cast_copy_of_a_buffer_is_never_reused():
    # float64 inputs cast the float32 buffer `scale` at trace time: that copy would miss in-place updates.
    torch.manual_seed(0)
    model = _Residual().eval()
    x, _ = _data(dtype=torch.float64)
    cache = PlanCache()
    cache.traced(model, x)
    assert len(cache) == 0
    cache.traced(model, x.float())
    assert len(cache) == 1


@pytest.mark.parametrize("make", [_mlp, _Residual])
def test_in_place_updates_are_read_live(make):
    torch.manual_seed(0)
    model = make().eval()
    x, y = _data()
    before = _assert_same(model, x, y)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.3).add_(0.05)
        for b in model.buffers():
            b.mul_(1.1)
    after = _assert_same(model, x, y)
    assert not torch.equal(before, after)


def test_replaced_parameters_modules_and_attributes_are_retraced():
    torch.manual_seed(0)
    model = _Residual().eval()
    x, y = _data()
    seen = [_assert_same(model, x, y)]
    model.fc.weight = nn.Parameter(torch.randn_like(model.fc.weight))
    seen.append(_assert_same(model, x, y))
    model.conv2 = nn.Conv2d(3, 3, 3, padding=1)
    seen.append(_assert_same(model, x, y))
    model.skip = False  # a Python branch fx baked into the graph
    seen.append(_assert_same(model, x, y))
    model.conv2.padding = (2, 2)  # a module attribute: the output grows, the residual sum would now fail
    model.conv2.dilation = (2, 2)  # ... unless the dilation keeps the shape: a different function, same shapes
    seen.append(_assert_same(model, x, y))
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(seen))


def test_each_batch_size_has_its_own_plan():
    torch.manual_seed(0)
    model = _Residual().eval()  # `view(x.size(0), -1)` bakes the batch size into the graph
    for n in (3, 5, 3, 1):
        _assert_same(model, *_data(n, seed=n))


def test_the_cache_does_not_keep_a_model_alive():
    cache = PlanCache()

    def bound_once() -> weakref.ref[nn.Module]:
        model = _Residual().eval()
        cache.traced(model, _data()[0])
        assert len(cache) == 1
        return weakref.ref(model)

    ref = bound_once()
    gc.collect()
    assert ref() is None
    assert len(cache) == 0


def test_mixed_training_modes_are_restored():
    torch.manual_seed(0)
    model = _Residual().train()
    model.conv1.eval()
    x, y = _data()
    _assert_same(model, x, y)
    _assert_same(model, x, y)
    assert model.training and model.conv2.training and not model.conv1.training


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "cnn", "channels": [3, 4], "hidden": 12},
        {"name": "lenet", "channels": [2, 3], "hidden": [10, 8], "pool": "max"},
        {"name": "resnet", "channels": [3, 4], "hidden": 10, "pooled": 2},
    ],
    ids=["cnn", "lenet", "resnet"],
)
def test_the_model_builders_follow_batch_norm_statistics_updated_in_place(spec):
    torch.manual_seed(0)
    model = build_model({**spec, "input_shape": [1, 6, 6], "num_classes": 4}).eval()
    x, y = _data(4)
    before = _assert_same(model, x, y)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    after = _assert_same(model, x, y)
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        assert not torch.equal(before, after)
