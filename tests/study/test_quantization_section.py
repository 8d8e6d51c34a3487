"""The study's optional quantization section: per model and seed, every grid's nearest / random / worst-case
rounding and certified accuracy, its table, summary and figure."""

import csv
import json

import pytest

from nonsingular.datasets import load_digits
from nonsingular.deployment.quantize import QuantizationSpec, layer_grids, nearest_codes, quantized_accuracy
from nonsingular.models import load_checkpoint
from nonsingular.study import load_study_config
from tests.support import run_cli

QUANTIZED = """
name = "quantized"
n_examples = 30
seeds = [0, 1]
[training]
epochs = 1
[attack]
kind = "pgd"
steps = 3
[grid]
eps_x = [0.05]
eps_w = [0.002]
scopes = ["per-example"]
[certify]
methods = ["ibp"]
[radius]
enabled = false
[scale]
enabled = false
[quantization]
enabled = true
bits = [8, 3]
granularity = ["per-tensor", "per-channel"]
n_examples = 20
method = "ibp"
random_draws = 2
[headline]
eps_x = 0.05
eps_w = 0.002
[[models]]
name = "standard"
"""


def test_study_quantization_section(monkeypatch, capsys, tmp_path):
    config = tmp_path / "q.toml"
    config.write_text(QUANTIZED)
    out, cache = tmp_path / "out", tmp_path / "cache"
    code, _, err = run_cli(
        monkeypatch, capsys, "study", "--config", str(config), "--out", str(out), "--cache", str(cache)
    )
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    runs = results["models"]["standard"]["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    data = load_digits()
    x, y = data.x_test[:20], data.y_test[:20]
    for run in runs:
        section = run["quantization"]
        assert section["n_examples"] == 20 and section["eps_x"] == 0.05 and section["method"] == "ibp"
        grids = {(g["bits"], g["granularity"]): g["accuracy"] for g in section["grids"]}
        assert set(grids) == {(8, "per-tensor"), (8, "per-channel"), (3, "per-tensor"), (3, "per-channel")}
        study = load_study_config(config)
        key = study.model_key(study.models[0], data.fingerprint, run["seed"])
        (path,) = cache.glob(f"standard-{key}.safetensors")
        model = load_checkpoint(path).model.eval()
        for (bits, granularity), acc in grids.items():
            for ex in ("0", "0.05"):
                assert acc["certified"][ex] <= acc["nearest"][ex]  # the nearest rounding lies in the certified box
                assert acc["worst per-example"][ex] <= acc["worst shared"][ex]
            spec = QuantizationSpec(bits, per_channel=granularity == "per-channel")
            grid = layer_grids(model, spec)
            assert acc["nearest"]["0"] == quantized_accuracy(model, x, y, grid, nearest_codes(model, grid))[0]
        assert grids[(3, "per-tensor")]["worst shared"]["0"] < grids[(8, "per-tensor")]["nearest"]["0"]
    rows = list(csv.DictReader((out / "quantization.csv").read_text().splitlines()))
    assert len(rows) == 2 * 4 * 2 and {r["seed"] for r in rows} == {"0", "1"}
    assert (out / "quantization.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "## Quantization: which defences survive deployment" in report
    assert "int3 per-channel, eps_x = 0.05: survive the worst-case rounding:" in report
    assert "quantization.png" in (out / "report.html").read_text()


def test_quantization_config_is_validated(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[quantization]\nenabled = true\nbits = [8, 8]\n")
    with pytest.raises(ValueError, match="must not repeat"):
        load_study_config(config)
    config.write_text("[quantization]\nbits = [1]\n")
    with pytest.raises(ValueError, match="bits"):
        load_study_config(config)
    config.write_text('[quantization]\ngranularity = ["per-row"]\n')
    with pytest.raises(ValueError, match="granularity"):
        load_study_config(config)
