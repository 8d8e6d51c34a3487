"""Explicit weights of a Lemma 1 result are exactly W + D, D = diag(t) rho sign(h)^T built term by term, for a
uniform radius (absolute eps_w) and a per-entry one (relative eps_w), float32 and float64."""

from __future__ import annotations

import pytest
import torch

from nonsingular import PGD, ThreatModel
from nonsingular.attacks.perturbation import LayerPath


@pytest.mark.parametrize("mode", ["absolute", "relative"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lemma1_weights_are_w_plus_d_exactly(small_mlp, batch, mode, dtype):
    model = small_mlp.to(dtype)
    try:
        x, y = batch[0].to(dtype), batch[1]
        threat = ThreatModel(eps_x=0.03, eps_w=0.01 if mode == "absolute" else 0.05, weight_mode=mode)
        result = PGD(steps=3, seed=1)(model, x, y, threat)
        for block in result.weight_blocks():
            assert block.path is LayerPath.LEMMA1
            assert (block.uniform_eps is not None) == (mode == "absolute")
            h, t = block.h_seen[5:17], block.t[5:17]
            sign = torch.where(h >= 0, 1.0, -1.0).to(dtype)
            want = block.weight + t[:, :, None] * (block.rho[None] * sign[:, None, :])
            got = block.materialise(slice(5, 17))[f"{block.name}.weight"]
            assert got.dtype == dtype and torch.equal(got, want)
    finally:
        small_mlp.float()
