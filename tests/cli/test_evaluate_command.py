"""`nonsingular evaluate` end to end, and one-line errors for bad input."""

import json

import pytest

from nonsingular.datasets import load_digits
from nonsingular.models import load_checkpoint
from tests.support import run_cli
from tests.support.attack_reference import explicit_joint_pgd


def test_evaluate_round_trip(monkeypatch, capsys, checkpoint, tmp_path):
    out = tmp_path / "eval.json"
    args = ["evaluate", "-c", str(checkpoint), "--eps-x", "0.05", "--eps-w", "0.002", "--steps", "5"]
    code, stdout, _ = run_cli(monkeypatch, capsys, *args, "--n-examples", "60", "--out", str(out))
    assert code == 0
    assert "joint" in stdout and "weight-only" in stdout
    report = json.loads(out.read_text())
    assert report["n_examples"] == 60
    assert report["threat"]["eps_x"] == 0.05 and report["threat"]["weight_ball"] == "elementwise"
    joint = report["cells"]["joint"]["per-example"]
    assert joint["checked"]
    # The joint adversary can do what either single one does: on this net (same attack settings in every
    # cell) it breaks more examples than both, and at least as many as a reference joint attack written out
    # over explicit per-example weights (one example of slack: different random starts).
    inputs, weights = (report["cells"][kind]["per-example"]["accuracy"] for kind in ("input", "weight"))
    assert joint["accuracy"] < min(inputs, weights)
    data = load_digits()
    model = load_checkpoint(checkpoint).model
    reference = explicit_joint_pgd(model, data.x_test[:60], data.y_test[:60], 0.05, 0.002, steps=5)
    assert joint["accuracy"] <= reference + 1 / 60
    assert report["cells"]["joint"]["per-example"]["paths"] == {"2": "lemma1", "4": "lemma1", "6": "lemma1"}
    assert report["cells"]["joint"]["per-example"]["accuracy"] <= report["cells"]["joint"]["shared"]["accuracy"]
    # the default attack is the ensemble, its budget recorded; on this trained MLP no sanity check fires, and
    # the table says which checks ran (test_evaluate_prints_and_records_sanity_flags: a model where they fire)
    assert report["attack"].startswith("AutoEnsemble(steps=5, restarts=1, targets=3")
    budget = {"steps": 5, "restarts": 1, "targets": 3, "shared_targets": 1, "max_gradient_steps_per_example": 20}
    assert report["attack_budget"] == budget
    assert report["flags"] == []
    assert "sanity checks (nested cells, random noise, gradients, train/eval mode): no flags" in " ".join(
        stdout.split()
    )
    fast = tmp_path / "fast.json"
    code, _, err = run_cli(monkeypatch, capsys, *args, "--attack", "pgd", "--n-examples", "60", "--out", str(fast))
    assert code == 0, err
    pgd = json.loads(fast.read_text())
    assert pgd["attack"].startswith("PGD(steps=5") and pgd["attack_budget"]["steps"] == 5
    for kind in ("input", "weight", "joint"):  # the ensemble finds at least the errors PGD finds
        assert report["cells"][kind]["per-example"]["accuracy"] <= pgd["cells"][kind]["per-example"]["accuracy"]
    # an existing output is never overwritten without --force
    before = out.read_text()
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", str(out))
    assert code != 0 and "exists" in err and out.read_text() == before


@pytest.mark.parametrize(
    ("case", "extra", "needle"),
    [
        ("missing", [], "not found"),
        ("corrupted", [], "not a readable safetensors"),
        ("negative", ["--eps-x", "-0.1"], "eps_x"),
        ("wrong-size", ["--data", "npz-28x28"], "takes inputs of shape (1, 8, 8)"),
        ("bad-layer", ["--layers", "nope"], "nope"),
        ("auto-with-margin", ["--loss", "margin"], "pgd attack only"),
    ],
)
def test_bad_input_one_line_error(monkeypatch, capsys, checkpoint, tmp_path, case, extra, needle):
    path = checkpoint
    if case == "missing":
        path = tmp_path / "absent.safetensors"
    elif case == "corrupted":
        path = tmp_path / "broken.safetensors"
        path.write_bytes(checkpoint.read_bytes()[:200])
    if case == "wrong-size":
        import torch

        from nonsingular.datasets import DATA_SOURCES, Dataset

        fake = Dataset(
            "npz-28x28",
            torch.rand(4, 1, 28, 28),
            torch.zeros(4, dtype=torch.long),
            torch.rand(4, 1, 28, 28),
            torch.zeros(4, dtype=torch.long),
            num_classes=10,
        )
        monkeypatch.setitem(DATA_SOURCES, "npz-28x28", lambda _arg, _seed: fake)
    code, stdout, err = run_cli(monkeypatch, capsys, "evaluate", "-c", str(path), "--eps-w", "0.001", *extra)
    assert code != 0
    assert needle in err
    assert "Traceback" not in err + stdout
    assert len(err.strip().splitlines()) == 1, err


def test_evaluate_user_model(monkeypatch, capsys, tmp_path):
    import torch
    from safetensors.torch import save_file

    source = tmp_path / "user_net.py"
    source.write_text(
        "from torch import nn\n\n\ndef make():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))\n"
    )
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    args = ["evaluate", "--model", f"{source}:make", "--weights", str(tmp_path / "w.safetensors")]
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--eps-w", "0.001", "--n-examples", "20", "--steps", "2")
    assert code == 0, err
    assert "1=lemma1, 3=lemma1" in stdout.replace("\n", " ")
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", "--model", "no_such_module_xyz:make", "--eps-w", "0.001")
    assert code == 2 and "no_such_module_xyz" in err and len(err.strip().splitlines()) == 1


STAIRCASE = """import torch
from torch import nn


class Staircase(nn.Module):
    def forward(self, x):
        return torch.round(x * 4) / 4  # a zero gradient almost everywhere: gradient masking


def make():
    return nn.Sequential(Staircase(), nn.Flatten(), nn.Linear(64, 10))
"""


def test_evaluate_prints_and_records_sanity_flags(monkeypatch, capsys, tmp_path):
    """A model that masks its gradients: the gradient check fires, and the flag is both printed and recorded."""
    import torch
    from safetensors.torch import save_file

    source = tmp_path / "staircase_net.py"
    source.write_text(STAIRCASE)
    data = load_digits()
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 10)
    features = (torch.round(data.x_train * 4) / 4).flatten(1)
    opt = torch.optim.Adam(linear.parameters(), lr=0.05)
    for _ in range(50):  # a fit on the staircase features: most test examples correct, each with zero gradient
        opt.zero_grad()
        torch.nn.functional.cross_entropy(linear(features), data.y_train).backward()
        opt.step()
    save_file({f"2.{k}": v.detach() for k, v in linear.state_dict().items()}, str(tmp_path / "w.safetensors"))
    out = tmp_path / "flags.json"
    args = ["evaluate", "--model", f"{source}:make", "--weights", str(tmp_path / "w.safetensors"), "--eps-x", "0.1"]
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--n-examples", "40", "--steps", "3", "--out", str(out))
    assert code == 0, err
    flags = {flag["check"]: flag for flag in json.loads(out.read_text())["flags"]}
    assert "gradients" in flags and "exactly zero" in flags["gradients"]["message"]
    printed = " ".join(stdout.split())
    assert "sanity flag (gradients): " + " ".join(flags["gradients"]["message"].split()) in printed
    assert "no flags" not in printed
