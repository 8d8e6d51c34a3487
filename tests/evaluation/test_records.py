"""Typed records of an evaluated cell and a certificate: JSON round trips, refusal of foreign records, and the
shared-scope rule of evaluate_cell that `nonsingular evaluate` and the study both use."""

import json

import pytest
import torch

from nonsingular import PGD, ThreatModel
from nonsingular.evaluation import Cell, Certificate, certify, evaluate_cell, evaluate_robustness
from nonsingular.threat import Scope


def test_cell_round_trip(small_mlp, batch):
    x, y = batch
    with torch.no_grad():
        clean = small_mlp(x).argmax(1) == y
    cell = evaluate_cell(small_mlp, x, y, ThreatModel(eps_x=0.05, eps_w=0.002), PGD(steps=3), clean)
    assert cell.robust is not None and cell.accuracy == float(cell.robust.float().mean())
    again = Cell.from_json(json.loads(json.dumps(cell.to_json())))
    assert again == cell and torch.equal(again.robust, cell.robust)
    assert "robust_examples" not in cell.to_json(examples=False)
    with pytest.raises(ValueError, match="not an evaluated cell"):
        Cell.from_json({**cell.to_json(), "extra": 1})


def test_shared_without_weights_is_the_per_example_cell(small_mlp, batch):
    x, y = batch
    with torch.no_grad():
        clean = small_mlp(x).argmax(1) == y
    threat = ThreatModel(eps_x=0.05)
    per_example = evaluate_cell(small_mlp, x, y, threat, PGD(steps=3), clean)
    shared = evaluate_cell(small_mlp, x, y, threat.with_scope(Scope.SHARED), PGD(steps=3), clean, None, per_example)
    assert shared.same_as == "per-example" and shared.accuracy == per_example.accuracy
    moved = ThreatModel(eps_w=0.002)
    other = evaluate_cell(small_mlp, x, y, moved.with_scope(Scope.SHARED), PGD(steps=3), clean, None, per_example)
    assert other.same_as is None  # weights move: the shared attack runs
    report = evaluate_robustness(small_mlp, x, y, ThreatModel(eps_x=0.05, eps_w=0.002), PGD(steps=3))
    assert report.cells["input"]["shared"].same_as == "per-example"
    assert "robust_examples" not in json.dumps(report.to_json())


def test_certificate_round_trip(small_mlp, batch):
    x, y = batch
    threat = ThreatModel(eps_x=0.005, eps_w=0.0001)
    report = certify(small_mlp, x[:20], y[:20], threat, ["ibp"])
    cert = Certificate.of(report.methods["ibp"], threat, 40)
    assert cert.n_examples == 40 and cert.bounded_examples == 20
    assert cert.certified_accuracy == report.methods["ibp"].n_certified / 40
    assert Certificate.from_json(json.loads(json.dumps(cert.to_json()))) == cert
    assert report.to_json()["certificates"][0]["n_examples"] == 20
    with pytest.raises(ValueError, match="not a certificate"):
        Certificate.from_json({"method": "ibp"})
