"""The study's model cache is keyed by the data's contents, not its path: the same file rewritten in place
trains a fresh model, and the report says which models were reused."""

from __future__ import annotations

from nonsingular.study.runner import run_study
from nonsingular.study.schema import StudyConfig
from tests.support.fileformats import random_npz


def test_study_cache_is_keyed_by_the_data_not_its_path(tmp_path):
    data = random_npz(tmp_path / "d.npz", seed=1)
    config = StudyConfig(
        data=f"npz:{data}",
        n_examples=10,
        training={"epochs": 1, "widths": [8]},
        architecture={"name": "mlp", "widths": [8]},
        attack={"steps": 1},
        grid={"eps_x": [0.01], "eps_w": [0.0]},
        headline={"eps_x": 0.01, "eps_w": 0.0},
        certify={"methods": ["ibp"]},
        radius={"enabled": False},
    )
    _, first = run_study(config, tmp_path / "out1", tmp_path / "cache")
    _, again = run_study(config, tmp_path / "out2", tmp_path / "cache")
    assert not first.models["standard"].runs[0].cached and again.models["standard"].runs[0].cached
    random_npz(data, seed=2)  # the same path, other contents
    _, changed = run_study(config, tmp_path / "out3", tmp_path / "cache")
    assert not changed.models["standard"].runs[0].cached
    assert changed.data["fingerprint"] != first.data["fingerprint"]
    report = (tmp_path / "out2" / "report.html").read_text()
    assert "reused from the cache" in report
    assert "trained in this run" in (tmp_path / "out3" / "report.html").read_text()
