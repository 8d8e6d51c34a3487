"""`nonsingular study` end to end on a tiny configuration: report, model cache, resume."""

import csv
import itertools
import json

import pytest
import torch

from nonsingular import PGD, AutoEnsemble, ThreatModel, check_attack
from nonsingular.attacks.sanity import SanityFlag
from nonsingular.datasets import load_digits
from nonsingular.evaluation import Cell
from nonsingular.models import load_checkpoint
from nonsingular.study import load_study_config, run_study
from nonsingular.study.cells import GridCell
from nonsingular.study.cells import carry as _carry
from nonsingular.study.cells import misses as _misses
from nonsingular.threat import Scope
from tests.support import run_cli
from tests.support.browser import find_chromium, inspect_page
from tests.support.study_results import study_results

TINY = """
name = "tiny"
n_examples = 40
[training]
epochs = 1
[attack]
steps = 3
[grid]
eps_x = [0.05]
eps_w = [0.002]
[certify]
methods = ["ibp", "crown"]
[radius]
n_examples = 6
iterations = 2
[headline]
eps_x = 0.05
eps_w = 0.002
[[models]]
name = "standard"
objective = "standard"
[[models]]
name = "input-AT"
objective = "pgd-at"
options = { eps_x = 0.05, attack_steps = 2 }
"""


def _recomputed_joint_accuracy(cache, model: dict, results: dict) -> float:
    """The joint per-example cell recomputed outside the study: the cached model, the study's first n test
    examples, the tiny config's attack (the ensemble, 3 steps, seed 0), checked; robust = clean and checked
    correct."""
    (path,) = [
        p
        for p in cache.glob("*.safetensors")
        if load_checkpoint(p).metadata["training"]["objective"] == model["objective"]
    ]
    net = load_checkpoint(path).model.eval()
    data = load_digits()
    n = results["n_examples"]
    x, y = data.x_test[:n], data.y_test[:n]
    attack = AutoEnsemble(steps=3, seed=0, batch_size=512)  # the study's default attack kind: auto
    result = attack(net, x, y, ThreatModel(eps_x=0.05, eps_w=0.002))
    assert repr(attack) == results["attack"]
    check = check_attack(net, x, y, result)
    assert check.passed
    with torch.no_grad():
        clean = net(x).argmax(1) == y
    return float((clean & check.correct).float().mean())


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    config = root / "tiny.toml"
    config.write_text(TINY)
    return root, config


@pytest.fixture(scope="module")
def fresh_study(study_run):
    """The tiny study run once from an empty folder and cache; returns the report folder."""
    root, config = study_run
    run_study(load_study_config(config), root / "out", root / "cache")
    return root / "out"


def test_study_report_cache_and_resume(monkeypatch, capsys, study_run, fresh_study):
    root, config = study_run
    out, cache = fresh_study, root / "cache"
    args = ["study", "--config", str(config), "--out", str(out), "--cache", str(cache)]
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"standard", "input-AT"}
    for model in results["models"].values():
        cells = {(c["eps_x"], c["eps_w"], c["scope"]): c for c in model["cells"]}
        assert len(cells) == 6 and all(c["checked"] for c in cells.values())
        joint = cells[(0.05, 0.002, "per-example")]["accuracy"]
        certified = [c["certified_accuracy"] for c in model["certified"] if c["eps_x"] == 0.05 and c["eps_w"] == 0.002]
        assert max(certified) <= joint
        own = cells[(0.05, 0.002, "per-example")]["own_accuracy"]
        assert own == _recomputed_joint_accuracy(cache, model, results) and joint <= own
        (run,) = model["runs"]
        assert run["seed"] == 0 and all(c["seed"] == 0 for c in model["cells"])
        radius = run["radius"]
        assert all(c <= a + 1e-12 for a, c in zip(radius["attack"], radius["certified"], strict=True))
    for name in (
        "report.html",
        "report.md",
        "heatmaps.png",
        "robust_accuracy.csv",
        "headline.csv",
        "verdicts.csv",
        "scale_verdicts.csv",
    ):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "## Scale: parametrizations and rescaling" in report and "operator relative" in report
    scale = results["models"]["standard"]["runs"][0]["scale"]
    assert [r["c"] for r in scale["rescaling"]] == [0.5, 2.0] and len(scale["layers"]) == 3
    assert all(r["max_logit_change"] < 1e-4 for r in scale["rescaling"])
    assert len(list(cache.glob("*.safetensors"))) == 2
    assert results["attack"].startswith("AutoEnsemble(steps=3") and results["attack_budget"]["targets"] == 3
    assert all(isinstance(m["flags"], list) for m in results["models"].values())
    assert "## Sanity flags" in (out / "report.md").read_text()

    # Interrupted after some cells: drop part of the state and the report; the rerun reuses models and cells.
    state = json.loads((out / "state.json").read_text())
    kept = {k: v for k, v in state["values"].items() if not k.startswith(("cert/input-AT", "radius/"))}
    (out / "state.json").write_text(json.dumps({**state, "values": kept}))
    (out / "report.html").unlink()
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "report:" in stdout and "Claim 1" in stdout
    again = json.loads((out / "results.json").read_text())
    assert all(r["cached"] for m in again["models"].values() for r in m["runs"])
    for name, model in results["models"].items():
        assert again["models"][name]["cells"] == model["cells"]
        assert [c["certified_accuracy"] for c in again["models"][name]["certified"]] == [
            c["certified_accuracy"] for c in model["certified"]
        ]
    assert (out / "report.html").exists()


def test_study_refuses_foreign_folder(monkeypatch, capsys, study_run, tmp_path):
    _, config = study_run
    (tmp_path / "precious.txt").write_text("keep me")
    code, _, err = run_cli(monkeypatch, capsys, "study", "--config", str(config), "--out", str(tmp_path))
    assert code == 2 and "holds no study" in err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_study_bad_config(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\neps_x = [-1]\n")
    code, _, err = run_cli(monkeypatch, capsys, "study", "--config", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and "eps_x" in err and len(err.strip().splitlines()) == 1


def test_report_renders_in_headless_chromium(fresh_study, tmp_path):
    """report.html of a fresh study as a reader's browser shows it: every figure decodes, one headline row per
    model, no console error. .ci/run installs Debian's chromium, so this runs in CI."""
    browser = find_chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (apt-get install chromium; .ci/run installs it): report not rendered")
    out = fresh_study
    results = json.loads((out / "results.json").read_text())
    seen = inspect_page(browser, out / "report.html", tmp_path / "profile")
    (tmp_path / "report.png").write_bytes(seen.screenshot)
    assert seen.errors == []
    assert seen.title == f"nonsingular study: {results['name']}"
    assert len(seen.images) == 6
    broken = [alt for alt, width, height in seen.images if width == 0 or height == 0]
    assert broken == [], f"figures that did not load: {broken}"
    assert seen.headline_rows == list(results["models"])
    assert seen.screenshot.startswith(b"\x89PNG") and len(seen.screenshot) > 10_000


def test_study_nested_grid_flag(small_mlp, digits, tmp_path):
    """A grid where robust accuracy rises from eps_x 0.02 to 0.05 (and shared undercuts per-example) is flagged,
    naming the cells; the flag reaches the report."""
    from nonsingular.study.cache import StudyState
    from nonsingular.study.model_run import _ModelRun
    from nonsingular.study.report import all_flags
    from nonsingular.study.schema import StudyConfig

    config = StudyConfig.model_validate(
        {
            "grid": {"eps_x": [0.02, 0.05], "eps_w": [0.0], "scopes": ["per-example", "shared"]},
            "headline": {"eps_x": 0.05, "eps_w": 0.0},
        }
    )
    x, y = digits.x_test[:30], digits.y_test[:30]
    run = _ModelRun("m", 0, small_mlp, x, y, config, digits, StudyState(tmp_path / "state.json", "f"), None)
    cells = [
        {"eps_x": 0.02, "eps_w": 0.0, "scope": "per-example", "accuracy": 0.5},
        {"eps_x": 0.05, "eps_w": 0.0, "scope": "per-example", "accuracy": 0.6},
        {"eps_x": 0.02, "eps_w": 0.0, "scope": "shared", "accuracy": 0.4},
        {"eps_x": 0.05, "eps_w": 0.0, "scope": "shared", "accuracy": 0.3},
    ]
    flags = run.sanity_flags(cells, 0.9, config.headline, PGD())
    assert [f["check"] for f in flags] == ["nested"]
    assert flags[0]["cells"] == ["m: per-example eps_x=0.02 eps_w=0", "m: per-example eps_x=0.05 eps_w=0"]
    assert "per-example eps_x=0.05 eps_w=0 60.0% > m: per-example eps_x=0.02 eps_w=0 50.0%" in flags[0]["message"]
    assert all_flags(study_results({"models": {"m": {"flags": flags}}})) == [SanityFlag(**f) for f in flags]


def test_study_refuses_old_state(monkeypatch, capsys, study_run, tmp_path):
    """A state.json of the first schema (string-keyed dicts, masks as "0101") is refused in one line."""
    _, config = study_run
    out = tmp_path / "old"
    out.mkdir()
    (out / "state.json").write_text(json.dumps({"fingerprint": "x", "values": {"cell/a/0.05/0.0/shared": {}}}))
    code, _, err = run_cli(monkeypatch, capsys, "study", "--config", str(config), "--out", str(out))
    assert code == 2 and "another version of the study" in err and "--fresh" in err
    assert len(err.strip().splitlines()) == 1


SEEDS = """
name = "seeds"
n_examples = 30
seeds = [3, 4]
[training]
epochs = 1
[attack]
steps = 2
[grid]
eps_x = [0.05, 0.1]
eps_w = [0.002, 0.005]
[certify]
methods = ["ibp"]
[radius]
enabled = false
[headline]
eps_x = 0.05
eps_w = 0.002
[[models]]
name = "standard"
"""


def test_study_seeds(monkeypatch, capsys, tmp_path):
    """Every model is trained and evaluated once per seed (two cached models, cells per seed, different
    initialisations); tables carry the seed and the headline its spread; no empty radius.csv; plain progress
    lines when stderr is not a terminal."""
    config = tmp_path / "seeds.toml"
    config.write_text(SEEDS)
    out, cache = tmp_path / "out", tmp_path / "cache"
    code, _, err = run_cli(
        monkeypatch, capsys, "study", "--config", str(config), "--out", str(out), "--cache", str(cache)
    )
    assert code == 0, err
    assert "standard seed 3: attacks 1/8" in err and "standard seed 4: certificates 8/8" in err
    results = json.loads((out / "results.json").read_text())
    model = results["models"]["standard"]
    assert results["seeds"] == [3, 4] and [r["seed"] for r in model["runs"]] == [3, 4]
    assert sorted({c["seed"] for c in model["cells"]}) == [3, 4] and len(model["cells"]) == 2 * 8 * 2
    # Nested threat sets: accuracy never rises along an axis, and per-example never exceeds shared.
    acc = {(c["seed"], c["eps_x"], c["eps_w"], c["scope"]): c["accuracy"] for c in model["cells"]}
    xs, ws = results["grid"]["eps_x"], results["grid"]["eps_w"]
    next_x, next_w = dict(itertools.pairwise(xs)), dict(itertools.pairwise(ws))
    checked = 0
    for (seed, ex, ew, scope), value in acc.items():
        for bigger in (
            (seed, ex, next_w.get(ew), scope),
            (seed, next_x.get(ex), ew, scope),
            (seed, ex, ew, "per-example"),
        ):
            if bigger in acc and bigger != (seed, ex, ew, scope):
                assert acc[bigger] <= value
                checked += 1
    assert checked == 2 * (2 * 10 + 8)  # seeds x (both scopes' 10 axis steps + 8 shared -> per-example)
    assert len(list(cache.glob("*.safetensors"))) == 2
    first, second = (load_checkpoint(p).model for p in sorted(cache.glob("*.safetensors")))
    assert not torch.equal(first[-1].weight, second[-1].weight)
    rows = list(csv.DictReader((out / "robust_accuracy.csv").read_text().splitlines()))
    assert sorted({r["seed"] for r in rows}) == ["3", "4"]
    (headline,) = list(csv.DictReader((out / "headline.csv").read_text().splitlines()))
    assert headline["seeds"] == "2" and headline["clean sd"] != ""
    assert not (out / "radius.csv").exists() and not (out / "radius.png").exists()


def _cell(robust: list[bool]) -> Cell:
    mask = torch.tensor(robust)
    return Cell(float(mask.float().mean()), 0.0, True, 0.0, 0.0, {}, {}, robust=mask)


def test_nesting_carry():
    """A larger threat set keeps every checked break of the smaller sets inside it: per example in the
    per-example scope, the whole lowest-accuracy perturbation in the shared scope."""
    own = _cell([True, True, False, True])
    smaller = [_cell([False, True, True, True]), _cell([True, True, True, False])]
    carried, count = _carry(own, smaller, Scope.PER_EXAMPLE)
    assert carried.robust.tolist() == [False, True, False, False] and carried.accuracy == 0.25 and count == 2
    assert _misses(own, smaller) and not _misses(carried, smaller)
    shared, count = _carry(_cell([True, True, True, False]), [_cell([True, False, False, False])], Scope.SHARED)
    assert shared.robust.tolist() == [True, False, False, False] and count == 1
    kept, count = _carry(_cell([True, False, False, False]), [_cell([True, True, False, False])], Scope.SHARED)
    assert kept.robust.tolist() == [True, False, False, False] and count == 0
    record = GridCell(0, 0.1, 0.002, "per-example", carried, own.accuracy, count, True)
    assert GridCell.from_json(json.loads(json.dumps(record.to_json()))).cell.robust.tolist() == carried.robust.tolist()


def test_progress_lines_throttle_interleaved_workers(monkeypatch, capsys):
    """Two workers' training ticks interleave: each stage prints its first and last tick, not every tick (a log
    of the full MNIST study held a line per batch when the throttle looked at the last label only)."""
    from nonsingular.cli import common

    clock = iter(float(i) * 0.01 for i in range(10_000))
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    update = common.progress_lines(0.0, every=30.0)
    for done in range(1, 101):
        update("standard seed 0: training", done, 100)
        update("standard seed 1: training", done, 100)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4, lines
    assert lines[-1].endswith("standard seed 1: training 100/100")


def test_certify_subset_and_points(small_mlp, digits, tmp_path):
    """[certify] n_examples and points: certificates only at the given points, as fractions of the first N
    examples, next to the checked attack's accuracy on those same examples; a point off the grid is refused."""
    from nonsingular.study.cache import StudyState
    from nonsingular.study.model_run import _ModelRun
    from nonsingular.study.schema import StudyConfig

    settings = {
        "grid": {"eps_x": [0.0, 0.02], "eps_w": [0.0, 0.001], "scopes": ["per-example"]},
        "headline": {"eps_x": 0.02, "eps_w": 0.001},
        "certify": {"methods": ["ibp", "crown"], "n_examples": 12, "points": [[0.02, 0.001]]},
        "attack": {"kind": "pgd", "steps": 3},
    }
    config = StudyConfig.model_validate(settings)
    x, y = digits.x_test[:30], digits.y_test[:30]
    run = _ModelRun("m", 0, small_mlp, x, y, config, digits, StudyState(tmp_path / "state.json", "f"), None)
    with torch.no_grad():
        clean = small_mlp(x).argmax(1) == y
    run.attack_cells([(0.02, 0.001)], config.attack.build(0), clean)
    rows = run.certify_cells([(0.02, 0.001)], clean, 12)
    assert [r["method"] for r in rows] == ["ibp", "crown"]
    robust = run.cell(0.02, 0.001, Scope.PER_EXAMPLE).robust[:12]
    for r in rows:
        assert (r["eps_x"], r["eps_w"], r["examples"]) == (0.02, 0.001, 12)
        assert r["attacked_accuracy"] == pytest.approx(float(robust.float().mean()))
        assert r["certified_accuracy"] <= r["attacked_accuracy"] and r["bounded_examples"] == int(robust.sum())
    # The radii's bound method: [radius] method, else the last of certify.methods.
    from nonsingular.study.units import _radii

    radius = {"k_x": 1.0, "k_w": 0.01, "s_max": 0.05, "n_examples": 5, "iterations": 2}
    for chosen, expected in ((None, "crown"), ("ibp", "ibp")):
        cfg = StudyConfig.model_validate(settings | {"radius": radius | {"method": chosen}})
        radii = _radii(small_mlp, x, y, cfg, digits, cfg.attack.build(0), None, "m")
        assert radii["certify_method"] == expected and len(radii["certified"]) == 5
    bad = settings | {"certify": {"points": [[0.05, 0.001]]}}
    with pytest.raises(ValueError, match=r"certify.points: \(0.05, 0.001\) must be a point of the grid"):
        StudyConfig.model_validate(bad)
