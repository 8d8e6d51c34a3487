"""benchmarks/vnncomp.py on a small benchmark folder of our own: the comparison table, the wrong-answer rule
against published results, and the --bounds-alone check that verify never loses what the bounds alone prove."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import vnncomp
from tests.support.verification import campaign_bench


def _published(folder: Path, tool: str, verdicts: dict[str, str]) -> None:
    """A results CSV in VNN-COMP 2021's format: benchmark, onnx, vnnlib, prep time, result, time."""
    rows = [f"bench,./b/{onnx},./b/{vnnlib},0.1,{verdict},1.0" for (onnx, vnnlib), verdict in verdicts.items()]
    (folder / f"{tool}.csv").write_text("\n".join(rows) + "\n")


TRUTH = {  # what campaign_bench's instances are: tight boxes hold, the whole plane does not
    ("net_a.onnx", "net_a_tight.vnnlib"): "holds",
    ("net_a.onnx", "net_a_wide.vnnlib"): "violated",
    ("net_b.onnx", "net_b_tight.vnnlib"): "holds",
    ("net_b.onnx", "net_b_wide.vnnlib"): "violated",
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return campaign_bench(tmp_path_factory.mktemp("bench"))


def _run(bench: Path, results: Path, work: Path, *extra: str) -> int:
    args = ["--benchmark-dir", str(bench), "--results-dir", str(results), "--work", str(work), *extra]
    return vnncomp.main(args)


def test_agreeing_results_pass_with_the_bounds_alone_column(bench, tmp_path, capsys):
    results = tmp_path / "published"
    results.mkdir()
    _published(results, "a-b-CROWN", TRUTH)
    assert _run(bench, results, tmp_path / "run", "--bounds-alone") == 0
    out = capsys.readouterr().out
    assert "| a-b-CROWN unsat+sat | bounds alone unsat |" in out
    assert "bounds alone prove 2; of those, not answered unsat by verify: 0" in out
    assert "4 instances: 2 unsat, 2 sat" in out and "wrong answers: 0" in out


def test_an_unsat_against_a_trusted_counterexample_is_wrong(bench, tmp_path, capsys):
    results = tmp_path / "published"
    results.mkdir()
    _published(results, "ERAN", {**TRUTH, ("net_b.onnx", "net_b_tight.vnnlib"): "violated"})
    _published(results, "RPM", {**TRUTH, ("net_a.onnx", "net_a_tight.vnnlib"): "violated"})  # not trusted
    assert _run(bench, results, tmp_path / "run") == 1
    out = capsys.readouterr().out
    assert "WRONG: unsat where a published tool found a counterexample: ('net_b.onnx', 'net_b_tight.vnnlib')" in out
    assert "disputed (not counted): unsat where only RPM claimed sat: ('net_a.onnx', 'net_a_tight.vnnlib')" in out


def test_an_instance_the_bounds_prove_but_verify_left_open_is_missed(bench, tmp_path, capsys):
    """A resumed run keeps its finished rows: a `timeout` recorded for an instance the bounds alone prove
    stands for a search that lost its own first stage's proof, and fails the run."""
    results = tmp_path / "published"
    results.mkdir()
    _published(results, "a-b-CROWN", TRUTH)
    work = tmp_path / "run"
    work.mkdir()
    (work / "results.csv").write_text("onnx,vnnlib,result,seconds\nnet_a.onnx,net_a_tight.vnnlib,timeout,60.0\n")
    assert _run(bench, results, work, "--bounds-alone") == 1
    out = capsys.readouterr().out
    assert "MISSED (the bounds alone prove it): net_a.onnx net_a_tight.vnnlib: timeout" in out
    assert "bounds alone prove 2; of those, not answered unsat by verify: 1" in out
