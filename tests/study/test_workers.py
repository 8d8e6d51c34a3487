"""The study's worker processes and its extra weight parametrizations: two workers give the results of one
process; every parametrization gets its own cells, verdicts and plot row."""

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from nonsingular.study import load_study_config, run_study
from nonsingular.study.verdicts import claim_comparisons, parametrization_views
from tests.support import script
from tests.support.processes import assert_succeeded
from tests.support.study_configs import TWO_MODELS_TWO_SEEDS


def _cells(results: dict) -> dict:
    """Everything but timings: cells, extra cells, certificates, clean accuracies."""
    return {
        name: (
            m["cells"],
            m["extra_cells"],
            [{k: v for k, v in c.items() if k != "seconds"} for c in m["certified"]],
            [r["clean_accuracy"] for r in m["runs"]],
        )
        for name, m in results["models"].items()
    }


def test_workers_match_one_process_and_parametrizations(tmp_path):
    path = tmp_path / "workers.toml"
    path.write_text(TWO_MODELS_TWO_SEEDS)
    config = load_study_config(path)
    _, typed = run_study(config, tmp_path / "one", tmp_path / "cache1")
    one, two = typed.to_json(), run_study(config, tmp_path / "two", tmp_path / "cache2", workers=2)[1].to_json()
    assert _cells(one) == _cells(two)
    # PGD on the grid, the auto ensemble (which takes no loss option) at the headline point.
    assert one["attack"].startswith("PGD(") and one["headline_attack"].startswith("AutoEnsemble(")
    # The parent recorded every worker's pieces: a resumed run recomputes nothing and gives the same numbers.
    state = json.loads((tmp_path / "two" / "state.json").read_text())["values"]
    assert any(k.startswith("cell@operator relative/input-AT/1/") for k in state)
    _, again = run_study(config, tmp_path / "two", tmp_path / "cache2", workers=2)
    assert _cells(again.to_json()) == _cells(two)

    extra = one["models"]["standard"]["extra_cells"]["operator relative"]
    # eps_x in {0, headline} x eps_w {0.01, 0.05} (+ the input-only column), two scopes, two seeds
    assert {(c["eps_x"], c["eps_w"]) for c in extra} == {
        (0.0, 0.01),
        (0.0, 0.05),
        (0.05, 0.0),
        (0.05, 0.01),
        (0.05, 0.05),
    }
    assert len(extra) == 5 * 2 * 2
    labels = [label for label, _ in parametrization_views(typed)]
    assert labels == ["elementwise absolute", "operator relative"]
    judged = {(c.parametrization, c.scope) for c in claim_comparisons(typed)}
    assert judged == {(p, s) for p in labels for s in ("per-example", "shared")}
    rows = list(csv.DictReader((tmp_path / "one" / "verdicts.csv").read_text().splitlines()))
    assert {r["parametrization"] for r in rows} == set(labels)
    summary = list(csv.DictReader((tmp_path / "one" / "robust_summary.csv").read_text().splitlines()))
    assert {r["parametrization"] for r in summary} == set(labels)
    assert "operator relative" in (tmp_path / "one" / "report.html").read_text()


def test_shipped_studies_are_valid_and_cover_the_parametrizations():
    """Every shipped study loads, every model's training settings validate, and the MNIST studies cover both
    balls and both modes."""
    from nonsingular.study import shipped_studies
    from nonsingular.study.model_units import train_config

    four = {"elementwise absolute", "elementwise relative", "operator absolute", "operator relative"}
    for name in shipped_studies():
        config = load_study_config(name)
        for entry in config.models:
            train_config(config, entry)
        if name.startswith("mnist-"):
            assert {config.grid.label, *(p.label for p in config.grid.parametrizations)} == four, name


def test_workers_exit_with_the_study_process(tmp_path):
    """A spawned worker whose study process dies without cleanup (killed) exits within seconds instead of
    running its unit to the end (a killed study left a worker burning a core for 35 minutes)."""
    pid_file = tmp_path / "child.pid"
    done = subprocess.run(
        [sys.executable, str(script("orphan_worker.py")), str(pid_file)], capture_output=True, text=True, timeout=120
    )
    assert_succeeded(done)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), "the orphaned worker kept running"


def _alive(pid: int) -> bool:
    """Running (a zombie awaiting its reaper counts as exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status
