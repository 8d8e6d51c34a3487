"""`nonsingular verify`: one instance end to end (ONNX file, VNNLIB file, result file re-checked by onnxruntime),
the hard timeout of the worker, --export-worst, --max-eps-w (its budget, a stop during its search, its CSV
columns), the campaign's resume after a kill, and one-line errors on hostile properties, CSVs and paths."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nonsingular.properties import load_vnnlib
from nonsingular.threat import EpsMode
from nonsingular.verification import Status, VerifyOptions, radius, read_results, run_campaign, run_isolated
from nonsingular.verification.campaign import JOINT_COLUMNS, read_instances
from nonsingular.verification.result import VerificationResult
from tests.support import run_cli
from tests.support.verification import mlp, to_onnx, vnnlib


def _parse_result(text: str) -> dict[str, float]:
    body = text.split("\n", 1)[1].replace("(", " ").replace(")", " ").split()
    return {body[k]: float(body[k + 1]) for k in range(0, len(body), 2)}


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)[None]})[0][0]


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    """A benchmark folder: one ONNX MLP and three properties (unsat, sat, sat gzipped), and its instances CSV."""
    model = mlp((2, 16, 16, 2), 0)
    to_onnx(model, tmp_path / "net.onnx")
    with torch.no_grad():
        top = int(model(torch.tensor([[0.2, 0.3]])).argmax())
    (tmp_path / "tight.vnnlib").write_text(vnnlib([0.199, 0.299], [0.201, 0.301], 2, [[(1 - top, top)]]))
    (tmp_path / "wide.vnnlib").write_text(vnnlib([-9.0, -9.0], [9.0, 9.0], 2, [[(1 - top, top)], [(top, 1 - top)]]))
    (tmp_path / "wide2.vnnlib.gz").write_bytes(gzip.compress((tmp_path / "wide.vnnlib").read_bytes()))
    (tmp_path / "instances.csv").write_text(
        "net.onnx,tight.vnnlib,30\nnet.onnx,wide.vnnlib,30\nnet.onnx,wide2.vnnlib,30\n"
    )
    return tmp_path


def test_one_instance_writes_a_result_file_that_onnxruntime_confirms(bench: Path, monkeypatch, capsys) -> None:
    out = bench / "result.txt"
    code, _, err = run_cli(
        monkeypatch, capsys, "verify", str(bench / "net.onnx"), str(bench / "wide.vnnlib"), "--out", str(out)
    )
    assert code == 0, err
    text = out.read_text()
    assert text.startswith("sat\n((X_0 ")
    values = _parse_result(text)
    x = np.array([values["X_0"], values["X_1"]])
    case = load_vnnlib(bench / "wide.vnnlib").cases[0]
    assert bool(case.contains(torch.tensor(x)[None]).all())
    y = _ort(bench / "net.onnx", x)
    assert np.array_equal(y.astype(np.float64), np.array([values["Y_0"], values["Y_1"]]))
    assert min(float(c.violation(torch.tensor(y, dtype=torch.float64)[None])[0]) for c in case.unsafe) <= 0
    code, stdout, _ = run_cli(monkeypatch, capsys, "verify", str(bench / "net.onnx"), str(bench / "tight.vnnlib"))
    assert code == 0 and stdout == "unsat\n"


def test_the_worker_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    model = mlp((64, 512, 512, 512, 512, 2), 1)
    to_onnx(model, tmp_path / "big.onnx")
    with torch.no_grad():
        top = int(model(torch.zeros(1, 64)).argmax())
    (tmp_path / "p.vnnlib").write_text(vnnlib([-0.01] * 64, [0.01] * 64, 2, [[(1 - top, top)]]))
    options = VerifyOptions(methods=(), max_eps_w=False)  # no bounds: only attack rounds, each of them long
    t0 = time.monotonic()
    result = run_isolated(tmp_path / "big.onnx", tmp_path / "p.vnnlib", 1.0, options)
    elapsed = time.monotonic() - t0
    assert result.status in (Status.TIMEOUT, Status.UNKNOWN)
    assert elapsed < 2.0


def test_joint_sat_exports_weights_that_onnxruntime_confirms(bench: Path, monkeypatch, capsys) -> None:
    worst = bench / "worst.onnx"
    out = bench / "joint.txt"
    args = [
        "verify",
        str(bench / "net.onnx"),
        str(bench / "tight.vnnlib"),
        "--eps-w",
        "2.0",
        "--weight-mode",
        "relative",
    ]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--export-worst", str(worst), "--out", str(out))
    assert code == 0, err
    assert out.read_text().startswith("sat\n")
    values = _parse_result(out.read_text())
    y = _ort(worst, np.array([values["X_0"], values["X_1"]]))
    assert np.array_equal(y.astype(np.float64), np.array([values["Y_0"], values["Y_1"]]))
    case = load_vnnlib(bench / "tight.vnnlib").cases[0]
    assert float(case.unsafe[0].violation(torch.tensor(y, dtype=torch.float64)[None])[0]) <= 0


def test_max_eps_w_reports_a_bracket(bench: Path, monkeypatch, capsys) -> None:
    args = ["verify", str(bench / "net.onnx"), str(bench / "tight.vnnlib"), "--max-eps-w", "--weight-mode", "relative"]
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--max-eps-w-timeout", "20")
    assert code == 0 and stdout == "unsat\n"
    assert "eps_w proven up to" in err and "bounds alone:" in err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_the_bisection_budget_is_validated(bench: Path, monkeypatch, capsys, value: str) -> None:
    args = ["verify", str(bench / "net.onnx"), str(bench / "tight.vnnlib"), "--max-eps-w"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--max-eps-w-timeout", value)
    assert code == 2 and "--max-eps-w-timeout must be a positive number" in err, err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(monkeypatch, capsys, *args, "--max-eps-w-method", "milp")
    assert code == 2 and "--max-eps-w-method" in err


def test_a_stop_during_the_search_keeps_the_answer_and_the_bounds_radius(bench: Path, monkeypatch) -> None:
    marker = bench / "searching"

    def stuck(*args: object, **kwargs: object) -> None:  # a search that never ends (in the forked worker)
        marker.write_text("stage 2")
        time.sleep(600)

    monkeypatch.setattr(radius, "complete_pieces", stuck)
    # One step gets all of the search's time: its bounds never run out of it, so the search is always reached.
    monkeypatch.setattr(radius, "BAB_STEPS", 1)
    options = VerifyOptions(max_eps_w=True, weight_mode=EpsMode.RELATIVE, max_eps_w_timeout=6.0)
    result = run_isolated(bench / "net.onnx", bench / "tight.vnnlib", 30, options)
    # The stop came during branch and bound's stage.
    assert marker.exists(), {k: v for k, v in result.stats.items() if k.startswith("eps")}
    assert result.status is Status.UNSAT
    assert "eps_w_seconds" not in result.stats  # the bisection did not finish: it was stopped
    assert result.stats["eps_w_proven"] >= result.stats["eps_w_proven_bounds"] > 0
    assert result.stats["eps_w_proven_bounds"] <= result.stats["eps_w_open_bounds"]
    assert result.seconds < 30  # the answer's time, not the bisection's


def test_the_campaign_records_both_radii(bench: Path) -> None:
    todo = read_instances(bench / "instances.csv")[:1]
    out = bench / "joint.csv"
    stats = {"eps_w_proven": 0.05, "eps_w_open": 0.0525, "eps_w_proven_bounds": 0.03, "eps_w_open_bounds": 0.0315}

    def runner(onnx: Path, prop: Path, timeout: float, options: VerifyOptions) -> VerificationResult:
        return VerificationResult(Status.UNSAT, 0.5, stats=dict(stats))

    rows = run_campaign(todo, out, runner=runner, joint=True)
    assert out.read_text().splitlines()[0].endswith(",".join(JOINT_COLUMNS))
    for row in (rows[0], read_results(out)[0]):
        assert (row.eps_w_proven, row.eps_w_proven_bounds, row.eps_w_refuted) == (0.05, 0.03, None)
        assert (row.eps_w_open, row.eps_w_open_bounds) == (0.0525, 0.0315)


def test_the_campaign_resumes_after_a_kill(bench: Path) -> None:
    todo = read_instances(bench / "instances.csv")
    assert todo[2].vnnlib_path.name == "wide2.vnnlib.gz"
    out = bench / "results.csv"
    calls: list[str] = []

    def killed_at_second(onnx: Path, prop: Path, timeout: float, options: VerifyOptions) -> VerificationResult:
        if calls:
            raise KeyboardInterrupt  # the kill
        calls.append(prop.name)
        return VerificationResult(Status.UNSAT, 0.5)

    with pytest.raises(KeyboardInterrupt):
        run_campaign(todo, out, runner=killed_at_second)
    with open(out, "a") as fh:
        fh.write("net.onnx,wide.vnnlib,sa")  # a torn line from the kill
    assert [r.vnnlib for r in read_results(out)] == ["tight.vnnlib"]
    rows = run_campaign(
        todo, out, runner=lambda o, p, t, opt: (calls.append(p.name), VerificationResult(Status.UNKNOWN, 1.0))[1]
    )
    assert calls == ["tight.vnnlib", "wide.vnnlib", "wide2.vnnlib.gz"]  # the finished instance was skipped
    assert [r.result for r in rows] == ["unsat", "unknown", "unknown"]
    assert out.read_text().splitlines() == [
        "onnx,vnnlib,result,seconds",
        "net.onnx,tight.vnnlib,unsat,0.500",
        "net.onnx,wide.vnnlib,unknown,1.000",
        "net.onnx,wide2.vnnlib,unknown,1.000",
    ]
    assert len(list((bench / "results_results").iterdir())) == 3


def test_the_campaign_command_prints_a_summary(bench: Path, monkeypatch, capsys) -> None:
    out = bench / "r.csv"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "verify", "--instances", str(bench / "instances.csv"), "--out", str(out)
    )
    assert code == 0, err
    assert [r.result for r in read_results(out)] == ["unsat", "sat", "sat"]
    assert "[3/3]" in err and "net.onnx" in stdout


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("net.onnx,tight.vnnlib\n", "instances.csv:1: expected 3 fields"),
        ("net.onnx,tight.vnnlib,soon\n", "instances.csv:1: timeout 'soon' is not a number"),
        ("net.onnx,tight.vnnlib,-1\n", "instances.csv:1: timeout must be a positive"),
        ("net.onnx,tight.vnnlib,nan\n", "instances.csv:1: timeout must be a positive"),
        ("\nnet.onnx,../outside.vnnlib,30\n", "instances.csv:2: path '../outside.vnnlib' leads outside the root"),
        ("/etc/passwd,tight.vnnlib,30\n", "instances.csv:1: path '/etc/passwd' must be relative"),
        ("net.onnx,missing.vnnlib,30\n", "instances.csv:1: 'missing.vnnlib' does not exist"),
        ("", "no instance"),
    ],
)
def test_bad_instance_csvs_are_one_line_errors(bench: Path, monkeypatch, capsys, csv: str, message: str) -> None:
    (bench.parent / "outside.vnnlib").write_text("x")
    (bench / "instances.csv").write_text(csv)
    code, _, err = run_cli(
        monkeypatch, capsys, "verify", "--instances", str(bench / "instances.csv"), "--out", str(bench / "r.csv")
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (bench / "r.csv").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("(declare-const X_0 Real)\n(assert (<= X_0 1)", "line 2: '(' never closed"),
        (
            "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
            "(assert (>= X_0 0))(assert (<= X_0 1))(assert (<= Y_0 0))",
            "the property has 1 inputs but the model takes 2",
        ),
        ("(declare-const X_0 Real)\n(define-fun f () Real 1)", "line 2: unsupported statement"),
    ],
)
def test_hostile_properties_are_one_line_errors_and_the_result_says_error(
    bench: Path, monkeypatch, capsys, text: str, message: str
) -> None:
    (bench / "bad.vnnlib").write_text(text)
    out = bench / "res.txt"
    code, _, err = run_cli(
        monkeypatch, capsys, "verify", str(bench / "net.onnx"), str(bench / "bad.vnnlib"), "--out", str(out)
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert out.read_text() == "error\n"


def test_usage_errors(bench: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "verify", "--instances", str(bench / "instances.csv"))
    assert code == 2 and "--instances needs --out" in err
    code, _, err = run_cli(monkeypatch, capsys, "verify", str(bench / "net.onnx"))
    assert code == 2 and "give MODEL.onnx PROPERTY.vnnlib" in err
    code, _, err = run_cli(monkeypatch, capsys, "verify", str(bench / "nope.onnx"), str(bench / "tight.vnnlib"))
    assert code == 2 and "nope.onnx" in err
    code, _, err = run_cli(
        monkeypatch, capsys, "verify", str(bench / "net.onnx"), str(bench / "tight.vnnlib"), "--method", "norm"
    )
    assert code == 2 and "--method" in err
    (bench / "results.csv").write_text("a,b\n")
    code, _, err = run_cli(
        monkeypatch, capsys, "verify", "--instances", str(bench / "instances.csv"), "--out", str(bench / "results.csv")
    )
    assert code == 2 and "not a results CSV" in err


def test_gzipped_models_and_properties_are_read(bench: Path) -> None:
    from nonsingular.verification import run_instance

    (bench / "net.onnx.gz").write_bytes(gzip.compress((bench / "net.onnx").read_bytes()))
    (bench / "tight.vnnlib.gz").write_bytes(gzip.compress((bench / "tight.vnnlib").read_bytes()))
    result = run_instance(bench / "net.onnx.gz", bench / "tight.vnnlib.gz", 30)
    assert result.status is Status.UNSAT
    (bench / "bad.onnx.gz").write_bytes(b"\x1f\x8b not really")
    with pytest.raises(ValueError, match="not a readable gzip file"):
        run_instance(bench / "bad.onnx.gz", bench / "tight.vnnlib", 30)
