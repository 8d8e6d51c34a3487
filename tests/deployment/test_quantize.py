"""Quantization grids as threats: per-channel radii, every rounding enumerated against the certificates, the
worst-case rounding on the grid, and the CLI."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from nonsingular import ThreatModel
from nonsingular.attacks import PGD
from nonsingular.bounds import margin_bounds
from nonsingular.check import check_attack
from nonsingular.deployment.quantize import (
    QuantizationSpec,
    Rounding,
    Scheme,
    evaluate_quantization,
    layer_grids,
    nearest_codes,
    quantization_threat,
    quantized_accuracy,
)
from tests.support import run_cli


def test_grids_follow_the_common_schemes():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-1.0, 0.5, 0.25], [0.2, -0.1, 0.4]]))
    model = nn.Sequential(layer)
    sym = layer_grids(model, QuantizationSpec(bits=8))["0"]
    assert sym.scale.item() == pytest.approx(1.0 / 127) and sym.zero_point.item() == 0
    per_channel = layer_grids(model, QuantizationSpec(bits=8, per_channel=True))["0"]
    assert per_channel.scale.flatten().tolist() == pytest.approx([1.0 / 127, 0.4 / 127])
    asym = layer_grids(model, QuantizationSpec(bits=4, scheme=Scheme.ASYMMETRIC))["0"]
    assert asym.scale.item() == pytest.approx(1.5 / 15) and asym.zero_point.item() == 10  # round(1.0 / 0.1)
    codes = nearest_codes(model, {"0": asym})["0"]
    assert codes.min() >= 0 and codes.max() <= 15
    assert (asym.dequantize(codes) - layer.weight).abs().max() <= asym.scale.item() / 2 + 1e-7
    with pytest.raises(ValueError, match="intN"):
        QuantizationSpec.parse("float8")
    with pytest.raises(ValueError, match="2 to 16 bits"):
        QuantizationSpec.parse("int1")


def test_channel_radii_are_validated_and_used():
    model = nn.Sequential(nn.Linear(4, 3))
    threat = ThreatModel(channel_eps={"0": [0.1, 0.2, 0.3]})
    rho = threat.weight_radius("0", model[0].weight)
    assert rho[:, 0].tolist() == pytest.approx([0.1, 0.2, 0.3]) and threat.uniform_radius("0") is None
    with pytest.raises(ValueError, match="2 radii for 3 output channels"):
        ThreatModel(channel_eps={"0": [0.1, 0.2]}).weight_layers(model)
    with pytest.raises(ValueError, match="elementwise weight ball only"):
        ThreatModel(channel_eps={"0": [0.1, 0.2, 0.3]}, weight_ball="operator")
    with pytest.raises(ValueError, match="finite"):
        ThreatModel(channel_eps={"0": [0.1, float("nan"), 0.3]})


@pytest.mark.parametrize("scope", ["per-example", "shared"])
def test_attacks_with_channel_radii_pass_the_verifier(small_mlp, batch, scope):
    x, y = batch
    threat, _ = quantization_threat(small_mlp, QuantizationSpec(bits=4, per_channel=True))
    threat = threat.model_copy(update={"eps_x": 0.02, "scope": scope})
    result = PGD(steps=5)(small_mlp, x, y, threat)
    check = check_attack(small_mlp, x, y, result)
    assert check.passed, check.problems
    assert check.accuracy < float((small_mlp(x).argmax(1) == y).float().mean())


def test_per_channel_radii_certify_more_than_the_tensor_radius_covering_them(small_mlp, batch):
    x, y = batch
    threat, _ = quantization_threat(small_mlp, QuantizationSpec(bits=8, per_channel=True))
    covering = ThreatModel(layer_eps={name: max(radii) for name, radii in threat.channel_eps})
    for method in ("ibp", "crown"):
        fine = margin_bounds(small_mlp, x.double(), y, threat, method).worst
        coarse = margin_bounds(small_mlp, x.double(), y, covering, method).worst
        assert bool((fine >= coarse - 1e-9).all()) and bool((fine > coarse + 1e-6).any())


def test_no_rounding_breaks_a_certified_example():
    """Every one of the 2^10 roundings of a 3-2-2 network's weights to its 4-bit grid, against the certificates."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)).double()
    x = torch.randn(300, 3, dtype=torch.float64).clamp(-4, 4)
    y = model(x).argmax(1)
    assert 0 < int(y.sum()) < len(y)  # both classes, so the boundary runs through the examples
    spec = QuantizationSpec(bits=4, rounding=Rounding.ANY)
    threat, grids = quantization_threat(model, spec, ThreatModel(domain=(-4.0, 4.0)))
    weights = {name: dict(model.named_modules())[name].weight.detach() for name in grids}
    neighbours = {
        name: (torch.floor(w / g.scale + g.zero_point), torch.ceil(w / g.scale + g.zero_point))
        for (name, g), w in zip(grids.items(), weights.values(), strict=True)
    }
    sizes = [weights[name].numel() for name in grids]
    certified = {m: margin_bounds(model, x, y, threat, m).certified for m in ("ibp", "crown")}
    assert any(bool(c.any()) for c in certified.values())
    broken = torch.zeros(len(y), dtype=torch.bool)
    for bits in itertools.product((0, 1), repeat=sum(sizes)):
        codes, at = {}, 0
        for name, n in zip(grids, sizes, strict=True):
            low, high = neighbours[name]
            pick = torch.tensor(bits[at : at + n], dtype=torch.bool).reshape(low.shape)
            codes[name] = torch.where(pick, high, low).clamp(grids[name].qmin, grids[name].qmax)
            at += n
        _, correct = quantized_accuracy(model, x, y, grids, codes)
        broken |= ~correct
    for method, mask in certified.items():
        assert not bool((mask & broken).any()), f"{method} certified an example a rounding breaks"
    assert bool(broken.any())  # the enumeration does find roundings that change predictions


def test_worst_case_rounding_beats_nearest_and_is_on_the_grid(small_mlp, batch, tmp_path):
    x, y = batch
    spec = QuantizationSpec(bits=4)
    report = evaluate_quantization(small_mlp, x, y, spec, PGD(steps=10), eps_x=0.02, certify_method="ibp")
    rows = report.rows
    assert rows["worst-case rounding (shared)"][0.0] < rows["nearest"][0.0]
    assert rows["worst-case rounding (per-example)"][0.0] <= rows["worst-case rounding (shared)"][0.0]
    assert rows["certified (ibp, nearest rounding)"][0.0] <= rows["nearest"][0.0]
    _, grids = quantization_threat(small_mlp, spec)
    for name, codes in report.worst_codes.items():
        assert bool((codes == codes.round()).all()) and codes.abs().max() <= spec.qmax
        near = nearest_codes(small_mlp, grids)[name]
        assert (codes - near).abs().max() <= 1  # a neighbour of the weight, not an arbitrary grid point
    # The exported model reproduces the reported accuracy (counted on examples correct before quantization).
    _, correct = quantized_accuracy(small_mlp, x, y, grids, report.worst_codes)
    clean = small_mlp(x).argmax(1) == y
    assert float((correct & clean).float().mean()) == rows["worst-case rounding (shared)"][0.0]


def test_cli_quantize_evaluate_export_and_certify(monkeypatch, capsys, checkpoint, tmp_path):
    out, worst = tmp_path / "q.json", tmp_path / "worst.safetensors"
    args = ["evaluate", "-c", str(checkpoint), "--quantize", "int4", "--per-channel", "--eps-x", "0.02"]
    code, stdout, err = run_cli(
        monkeypatch, capsys, *args, "--steps", "5", "--n-examples", "40", "--export-worst", str(worst), "-o", str(out)
    )
    assert code == 0, err
    assert "grid: int4 symmetric per-channel, nearest rounding (codes -7..7)" in stdout
    report = json.loads(out.read_text())["quantization"]
    assert report["bits"] == 4 and report["per_channel"]
    assert set(report["accuracy"]) >= {"nearest", "certified (crown, nearest rounding)"}
    tensors = load_file(str(worst))
    codes = tensors["2.weight_q"].double()
    w = (codes - tensors["2.zero_point"]) * tensors["2.scale"]
    assert codes.abs().max() <= 7 and w.shape == (32, 64)
    code, stdout, err = run_cli(
        monkeypatch, capsys, "certify", "-c", str(checkpoint), "--quantize", "int8", "--eps-x", "0.01",
        "--n-examples", "40", "--steps", "5", "--rounding", "any",
    )  # fmt: skip
    assert code == 0, err
    assert "certified: no any rounding to this grid" in stdout


@pytest.mark.parametrize("seed", range(4))
def test_per_channel_bounds_hold_against_attacks_on_random_networks(seed):
    """Random MLPs, random per-channel radii (absolute and relative), eps_x and eps_b: no margin an attack
    reaches (checked, explicit weights) lies below any method's lower bound."""
    torch.manual_seed(seed)
    widths = [6, int(torch.randint(3, 9, ()).item()), int(torch.randint(3, 9, ()).item()), 4]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).double()
    x = torch.rand(64, 6, dtype=torch.float64)
    y = model(x).argmax(1)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    relative = seed % 2 == 1
    scale = 0.2 if relative else 0.05
    channel_eps = {n: (scale * torch.rand(dict(model.named_modules())[n].out_features)).tolist() for n in linear}
    threat = ThreatModel(
        eps_x=0.03, channel_eps=channel_eps, eps_b=0.01, weight_mode="relative" if relative else "absolute"
    )
    for scope in ("per-example", "shared"):
        result = PGD(steps=40, restarts=2, loss="margin")(model, x, y, threat.model_copy(update={"scope": scope}))
        check = check_attack(model, x, y, result)
        assert check.passed, check.problems
        logits = check.logits
        reached = logits.gather(1, y[:, None]).squeeze(1) - logits.scatter(1, y[:, None], -torch.inf).amax(1)
        for method in ("ibp", "crown", "norm"):
            lower = margin_bounds(model, x, y, threat, method).worst
            assert bool((lower <= reached + 1e-9).all()), f"{method} bound above an attacked margin ({scope})"


def test_radius_ray_through_a_grid_scales_every_channel_radius(small_mlp):
    from nonsingular.evaluation import Ray

    spec = QuantizationSpec(bits=4, per_channel=True)
    grid_threat, _ = quantization_threat(small_mlp, spec, ThreatModel(eps_x=0.0))
    ray = Ray(k_x=0.0, k_w=2.0, base=grid_threat)
    half = ray.threat(0.5)  # s k_w = 1: the grid itself
    same, doubled = dict(half.channel_eps), dict(ray.threat(1.0).channel_eps)
    assert set(same) == set(doubled) == {name for name, _ in grid_threat.channel_eps}
    for name, radii in grid_threat.channel_eps:
        assert same[name] == pytest.approx(radii)
        assert doubled[name] == pytest.approx(tuple(2 * r for r in radii))
    assert ray.threat(0.0).perturbs_weights is False


def test_cli_radius_in_multiples_of_the_grid(monkeypatch, capsys, checkpoint, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "radius", "-c", str(checkpoint), "--quantize", "int4", "--per-channel",
        "--n-examples", "12", "--iterations", "4", "--steps", "5", "--method", "ibp", "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "grid: int4 symmetric per-channel" in stdout and "at the grid itself (s = 1)" in stdout
    data = json.loads(out.read_text())
    assert data["k_x"] == 0 and data["k_w"] == 1 and data["s_max"] == 16
    assert all(c <= a + 1e-12 for a, c in zip(data["attacked"], data["certified"], strict=True))
    summary = data["quantization"]
    certified = sum(c >= 1 for c in data["certified"]) / 12
    assert summary["certified_at_grid"] == pytest.approx(certified) and summary["grid"].startswith("int4")
    code, _, err = run_cli(monkeypatch, capsys, "radius", "-c", str(checkpoint), "--quantize", "int4", "--k-x", "0.1",
                           "--k-w", "0")  # fmt: skip
    assert code == 2 and "--k-w" in err and len(err.strip().splitlines()) == 1


def test_scaled_threat_scales_every_radius_and_warm_up_honours_channel_radii(small_mlp, batch):
    from nonsingular.training.objectives import Adversarial, scaled_threat
    from nonsingular.training.registry import StepContext

    grid, _ = quantization_threat(small_mlp, QuantizationSpec(bits=4, per_channel=True), ThreatModel(eps_x=0.02))
    threat = grid.model_copy(update={"eps_b": 0.01})
    half = threat.scaled(0.5)
    assert half.eps_x == 0.01 and half.eps_b == 0.005
    for (name, radii), (same, halved) in zip(threat.channel_eps, half.channel_eps, strict=True):
        assert name == same and halved == pytest.approx(tuple(r / 2 for r in radii))
    assert scaled_threat(threat, 0.0).perturbs_weights is False and scaled_threat(threat, 1.0) is threat
    with pytest.raises(ValueError, match="factor"):
        threat.scaled(-1.0)
    # A warm-up step at scale 0 trains on the clean loss: no channel radius survives into the attack.
    x, y = batch
    clean = Adversarial(threat, steps=2)(small_mlp, x[:16], y[:16], StepContext(scale=0.0))["loss"]
    full = Adversarial(threat, steps=2)(small_mlp, x[:16], y[:16], StepContext(scale=1.0))["loss"]
    reference = torch.nn.functional.cross_entropy(small_mlp(x[:16]), y[:16])
    assert clean.item() == pytest.approx(reference.item(), rel=1e-6) and full.item() > clean.item()


def test_cli_evaluate_quantize_certify_method(monkeypatch, capsys, checkpoint, tmp_path):
    out = tmp_path / "q.json"
    args = ["evaluate", "-c", str(checkpoint), "--quantize", "int8", "--steps", "3", "--n-examples", "20"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--certify-method", "ibp", "-o", str(out))
    assert code == 0, err
    assert "certified (ibp, nearest rounding)" in json.loads(out.read_text())["quantization"]["accuracy"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--certify-method", "none", "-o", str(out), "--force")
    assert code == 0, err
    assert not any(k.startswith("certified") for k in json.loads(out.read_text())["quantization"]["accuracy"])
    code, _, err = run_cli(monkeypatch, capsys, *args, "--certify-method", "norm")
    assert code == 2 and "--certify-method must be one of" in err and len(err.strip().splitlines()) == 1
