"""Random faults: statistics, two's complement bit flips, draws inside the box, and the CLI table."""

from __future__ import annotations

import json

import pytest
import torch

from nonsingular import ThreatModel
from nonsingular.deployment import bit_flip_accuracies, flip_bit, summarise, uniform_box_accuracies
from nonsingular.deployment.quantize import QuantizationSpec, layer_grids, nearest_codes, quantized_accuracy
from tests.support import run_cli


def test_summary_statistics():
    f = summarise([0.5, 0.7, 0.9])
    assert f.mean == pytest.approx(0.7)
    half = 1.96 * 0.2 / 3**0.5
    assert (f.mean_low, f.mean_high) == pytest.approx((0.7 - half, 0.7 + half))
    assert f.q025 == pytest.approx(0.51) and f.q975 == pytest.approx(0.89)


def test_flip_bit_is_twos_complement():
    codes = torch.tensor([5, -5, 127, -128, 0])
    every = torch.ones(5, dtype=torch.bool)
    assert flip_bit(codes, 7, every).tolist() == [-123, 123, -1, 0, -128]  # the sign bit
    assert flip_bit(codes, 6, every).tolist() == [69, -69, 63, -64, 64]
    assert flip_bit(codes, 0, torch.tensor([True, False, False, False, False])).tolist() == [4, -5, 127, -128, 0]


def test_no_fault_is_the_unfaulted_model(small_mlp, batch):
    x, y = batch
    clean = float((small_mlp(x).argmax(1) == y).float().mean())
    assert uniform_box_accuracies(small_mlp, x, y, ThreatModel(), draws=3) == [clean] * 3
    grids = layer_grids(small_mlp, QuantizationSpec(bits=8))
    int8 = quantized_accuracy(small_mlp, x, y, grids, nearest_codes(small_mlp, grids))[0]
    assert bit_flip_accuracies(small_mlp, x, y, rate=0.0, draws=2) == [int8] * 2
    flipped = bit_flip_accuracies(small_mlp, x, y, rate=0.2, bits=(7, 6), draws=3)
    assert max(flipped) < int8  # a fifth of the signs and high bits flipped is not harmless
    with pytest.raises(ValueError, match=r"0\.\.7"):
        bit_flip_accuracies(small_mlp, x, y, rate=0.1, bits=(8,))


def test_uniform_draws_stay_in_the_box(small_mlp, batch, monkeypatch):
    """Every drawn weight and input lies in the threat's box (recorded from the forward pass)."""
    import nonsingular.deployment.faults as faults

    x, y = batch
    threat = ThreatModel(eps_x=0.05, eps_w=0.01, eps_b=0.02)
    seen = []
    real = faults._accuracy
    monkeypatch.setattr(faults, "_accuracy", lambda m, xs, ys, rep: seen.append((xs, rep)) or real(m, xs, ys, rep))
    uniform_box_accuracies(small_mlp, x, y, threat, draws=4)
    lb, ub = threat.input_bounds(x)
    params = dict(small_mlp.named_parameters())
    for xs, replaced in seen:
        assert bool(((xs >= lb) & (xs <= ub)).all())
        for name, value in replaced.items():
            radius = 0.02 if name.endswith("bias") else 0.01
            assert (value - params[name]).abs().max() <= radius + 1e-7
            assert (value - params[name]).abs().max() > radius / 2  # uniform, not collapsed to the centre


def test_cli_random_faults_next_to_the_worst_case(monkeypatch, capsys, checkpoint, tmp_path):
    out = tmp_path / "f.json"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "evaluate", "-c", str(checkpoint), "--eps-w", "0.01", "--random-faults", "5",
        "--fault-rate", "0.01", "--steps", "5", "--n-examples", "60", "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "random faults (5 draws" in stdout and "worst case" in stdout
    faults = json.loads(out.read_text())["random_faults"]
    assert set(faults) == {"uniform in the threat box", "int8 bit flips (bits 7, rate 0.01)"}
    assert all(f["draws"] == 5 and 0 <= f["mean_low"] <= f["mean"] <= f["mean_high"] <= 1 for f in faults.values())
