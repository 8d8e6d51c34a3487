import pytest
import torch

from nonsingular import PGD, ThreatModel
from nonsingular.evaluation.radius import Ray, attacked_radius, bisect


def test_bisect_finds_thresholds():
    true_radius = torch.tensor([0.013, 0.05, 0.11, 0.3, 0.0], dtype=torch.float64)

    def breaks(idx, s):
        return true_radius[idx] <= s

    out = bisect(5, breaks, s_hi=0.2, iterations=12, want_first_true=True)
    resolution = 0.2 / 2**12
    inside = ~out.censored
    assert out.censored.tolist() == [False, False, False, True, False]
    assert torch.all(out.radius[inside] >= true_radius[inside].double())
    assert torch.all(out.radius[inside] - true_radius[inside].double() <= resolution)

    def holds(idx, s):
        return true_radius[idx] >= s

    low = bisect(5, holds, s_hi=0.2, iterations=12, want_first_true=False)
    assert low.censored.tolist() == [False, False, False, True, False]
    assert torch.all(low.radius[inside] <= true_radius[inside].double())
    assert torch.all(true_radius[inside].double() - low.radius[inside] <= resolution)


def test_ray_validation():
    with pytest.raises(ValueError):
        Ray(0.0, 0.0)
    assert Ray(2.0, 0.1).s_max == 0.5
    threat = Ray(1.0, 0.04, ThreatModel(weight_mode="relative")).threat(0.1)
    assert threat.eps_x == pytest.approx(0.1) and threat.eps_w == pytest.approx(0.004)
    assert threat.weight_mode.value == "relative"


def test_attacked_radius_is_an_upper_bound(small_mlp, digits):
    x, y = digits.x_test[:12], digits.y_test[:12]
    ray = Ray(1.0, 0.02)
    out = attacked_radius(small_mlp, x, y, ray, PGD(steps=5), s_hi=0.3, iterations=5)
    # at each example's radius (not censored) the attack does succeed: re-check one by one
    for i in torch.nonzero(~out.censored & (out.radius > 0)).flatten().tolist()[:4]:
        s = float(out.radius[i])
        result = PGD(steps=5)(small_mlp, x[i : i + 1], y[i : i + 1], ray.threat(s))
        assert result.logits.argmax(1).item() != y[i].item()
