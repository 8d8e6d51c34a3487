"""`nonsingular certify` end to end, and the certify library it adapts."""

from __future__ import annotations

import json

import pytest

from nonsingular import PGD, ThreatModel
from nonsingular.evaluation import certified_mask, certify
from tests.support import run_cli


def test_certify_library_report_is_consistent(small_mlp, batch):
    x, y = batch
    threat = ThreatModel(eps_x=0.01, eps_w=0.0005)
    report = certify(small_mlp, x, y, threat, attack=PGD(steps=10))
    assert not report.problems
    assert list(report.methods) == ["norm", "ibp", "crown", "alpha-crown"]
    for name, res in report.methods.items():
        assert res.broken == 0
        assert res.certified_accuracy <= report.attacked_accuracy <= report.clean_accuracy
        assert len(res.worst_margin) == len(y) == len(res.loss_bound)
        assert res.n_certified == int(certified_mask(small_mlp, x, y, threat, name).sum())
        if res.tightness is not None and res.tightness.median is not None:
            assert res.tightness.median >= 1 - 1e-6  # a bound below what the attack reached would be unsound
    assert report.methods["crown"].n_certified >= report.methods["ibp"].n_certified
    assert report.methods["crown"].n_certified > 0
    assert report.methods["alpha-crown"].n_certified >= report.methods["crown"].n_certified
    payload = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert payload["threat"]["eps_w"] == 0.0005 and payload["bound_dtype"] == "float64"
    assert payload["methods"]["crown"]["margin_quantiles"]["50%"] == report.methods["crown"].margin_quantiles["50%"]


def test_certify_without_attack_has_no_tightness(small_mlp, batch):
    x, y = batch
    report = certify(small_mlp, x[:8], y[:8], ThreatModel(eps_x=0.01), methods=["ibp"], attack=None)
    assert report.attacked_accuracy is None and report.methods["ibp"].tightness is None


def test_certify_round_trip(monkeypatch, capsys, checkpoint, tmp_path):
    out = tmp_path / "cert.json"
    args = ["certify", "-c", str(checkpoint), "--eps-x", "0.01", "--eps-w", "0.0005", "--steps", "5"]
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--n-examples", "40", "--out", str(out))
    assert code == 0, err
    assert "crown" in stdout and "AutoEnsemble(steps=5" in stdout
    report = json.loads(out.read_text())
    assert report["n_examples"] == 40 and set(report["methods"]) == {"norm", "ibp", "crown", "alpha-crown"}
    assert report["threat"]["eps_x"] == 0.01 and report["problems"] == []
    assert all(m["broken"] == 0 for m in report["methods"].values())
    # never overwrites without --force
    before = out.read_text()
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", str(out))
    assert code != 0 and "exists" in err and out.read_text() == before
    code, _, _ = run_cli(
        monkeypatch, capsys, *args, "--n-examples", "10", "--method", "ibp", "--out", str(out), "--force"
    )
    assert code == 0 and set(json.loads(out.read_text())["methods"]) == {"ibp"}


def test_certify_alpha_final_slopes(monkeypatch, capsys, checkpoint, tmp_path):
    """--alpha-slopes final optimises the final margins' slopes only: never looser than CROWN on any example, and
    a different optimisation from every pass's (the option reaches the engine)."""
    worst = {}
    for slopes in ("final", "all"):
        out = tmp_path / f"{slopes}.json"
        args = ["certify", "-c", str(checkpoint), "--eps-x", "0.03", "--eps-w", "0.001", "--steps", "0"]
        args += ["--method", "crown,alpha-crown", "--alpha-steps", "5", "--alpha-slopes", slopes, "--n-examples", "12"]
        code, _, err = run_cli(monkeypatch, capsys, *args, "--out", str(out))
        assert code == 0, err
        methods = json.loads(out.read_text())["methods"]
        worst[slopes] = methods["alpha-crown"]["worst_margin"]
        worst["crown"] = methods["crown"]["worst_margin"]
    assert all(f >= c - 1e-9 for f, c in zip(worst["final"], worst["crown"], strict=True))
    assert worst["final"] != worst["all"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--method", "zonotope"], "--method must be one of"),
        (["--alpha-slopes", "some"], "--alpha-slopes"),
        (["--method", "ibp,crown", "--method", "all", "--steps", "-1"], "--steps"),
        (["--layers", "nope"], "nope"),
        (["--eps-w", "-1"], "eps_w"),
        (["--alpha-steps", "-1"], "--alpha-steps"),
        (["--bound-memory-mb", "0"], "--bound-memory-mb"),
    ],
)
def test_certify_bad_input_one_line_error(monkeypatch, capsys, checkpoint, extra, needle):
    code, _, err = run_cli(monkeypatch, capsys, "certify", "-c", str(checkpoint), "--n-examples", "4", *extra)
    assert code == 2 and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_method_parsing():
    from nonsingular.cli.certify_cmd import parse_methods

    assert [m.value for m in parse_methods(["crown,norm"])] == ["norm", "crown"]
    assert [m.value for m in parse_methods(["all", "ibp"])] == ["norm", "ibp", "crown", "alpha-crown"]
    assert [m.value for m in parse_methods(["alpha-crown"])] == ["alpha-crown"]


def test_residual_cnn_is_certified_from_the_cli(monkeypatch, capsys, tmp_path):
    """A ResNet with BatchNorm trains and certifies with every method it supports; norm is refused in one line."""
    ckpt = tmp_path / "resnet.safetensors"
    code, _, err = run_cli(
        monkeypatch, capsys, "train", "--architecture", "resnet", "--epochs", "1", "--eval-steps", "0", "--out",
        str(ckpt), "-q",
    )  # fmt: skip
    assert code == 0, err
    out = tmp_path / "cert.json"
    args = ["certify", "-c", str(ckpt), "--eps-x", "0.001", "--eps-w", "0.0001", "--n-examples", "6", "--steps", "3"]
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--alpha-steps", "2", "--out", str(out))
    assert code == 0, err
    assert "methods for this model: ibp, crown, alpha-crown (not norm)" in stdout
    report = json.loads(out.read_text())
    assert list(report["methods"]) == ["ibp", "crown", "alpha-crown"]
    assert all(m["broken"] == 0 for m in report["methods"].values())
    crown, ibp = report["methods"]["crown"], report["methods"]["ibp"]
    assert all(c >= i - 1e-9 for c, i in zip(crown["worst_margin"], ibp["worst_margin"], strict=True))
    code, _, err = run_cli(monkeypatch, capsys, *args, "--method", "norm")
    assert code == 2 and "norm bound" in err and len(err.strip().splitlines()) == 1
