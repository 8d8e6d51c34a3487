"""Radii along a ray by bisection: the search itself, the ray, and the attacked radius as an upper bound."""

import pytest
import torch

from nonsingular import PGD, ThreatModel, check_attack
from nonsingular.evaluation.certify import certified_mask
from nonsingular.evaluation.radius import Ray, attacked_radius, bisect, certified_radius


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
    """At each example's attacked radius r the attack found a point of the threat set at r that the checker
    confirms misclassified, so the true radius is at most r; one resolution below r it found none (r is the
    bisection's first success, not any success); and the certified radius, a lower bound, never exceeds it."""
    x, y = digits.x_test[:12], digits.y_test[:12].clone()
    y[-1] = (y[-1] + 1) % 10  # a wrong label: the clean point is already an error, radius 0
    ray, s_hi, iterations = Ray(1.0, 0.02), 0.3, 5
    resolution = s_hi / 2**iterations
    pgd, calls = PGD(steps=5), []

    def recording(model, xs, ys, threat):
        result = pgd(model, xs, ys, threat)
        calls.append((xs, ys, threat, result))
        return result

    out = attacked_radius(small_mlp, x, y, ray, recording, s_hi=s_hi, iterations=iterations)
    with torch.no_grad():
        clean_wrong = small_mlp(x).argmax(1) != y
    assert bool(clean_wrong[-1]) and bool((out.radius[clean_wrong] == 0).all()) and not out.censored[clean_wrong].any()
    found = ~out.censored & ~clean_wrong
    assert int(found.sum()) >= 8, "too few examples have an attacked radius for the test to mean anything"

    def tried(i: int) -> list[tuple[float, bool]]:
        """(s, misclassified) of every recorded attack on example i, checked independently of the search."""
        seen = []
        for xs, ys, threat, result in calls:
            rows = [j for j in range(len(xs)) if torch.equal(xs[j], x[i])]
            if rows:
                s = threat.eps_x / ray.k_x
                assert threat == ray.threat(s)
                check = check_attack(small_mlp, xs, ys, result)
                assert check.passed, check.problems
                seen.append((s, not bool(check.correct[rows[0]])))
        return seen

    for i in torch.nonzero(found).flatten().tolist():
        r, seen = float(out.radius[i]), tried(i)
        assert (r, True) in seen, f"example {i}: no checked error at its attacked radius {r}"
        below = [s for s, fooled in seen if s < r]
        assert not any(fooled for s, fooled in seen if s < r), f"example {i}: an error below its radius {r}"
        assert r - max(below, default=0.0) <= resolution * (1 + 1e-9), f"example {i}: {r} is not resolved"
    certify = lambda a, b, t: certified_mask(small_mlp, a, b, t, "crown")  # noqa: E731
    lower = certified_radius(x, y, ray, certify, s_hi=s_hi, iterations=8)
    assert bool((lower.radius > 0).any()), "no certified radius to compare with"
    assert bool((lower.radius <= out.radius).all()), (lower.radius, out.radius)
