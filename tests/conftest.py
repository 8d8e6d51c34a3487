"""Seeded tiny models and data shared by the tests (CPU, offline, fast)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nonsingular.datasets import Dataset, load_digits
from nonsingular.models import MLP


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked slow (pyproject's marker) are skipped unless --runslow is given."""
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_digits()


def train_mlp(data: Dataset, widths: tuple[int, ...] = (32, 32), epochs: int = 8, seed: int = 0) -> MLP:
    """A small MLP trained with Adam on the digits; about a second on one core."""
    torch.manual_seed(seed)
    model = MLP(data.input_shape, widths, data.num_classes, data.mean, data.std)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(data.y_train), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def small_mlp(digits: Dataset) -> MLP:
    return train_mlp(digits)


@pytest.fixture(scope="session")
def batch(digits: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return digits.x_test[:48], digits.y_test[:48]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, small_mlp: MLP, digits: Dataset):
    """The small MLP saved as a checkpoint of the digits."""
    from nonsingular.models import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "mlp.safetensors"
    spec = {
        "name": "mlp",
        "input_shape": list(digits.input_shape),
        "widths": [32, 32],
        "num_classes": 10,
        "mean": digits.mean,
        "std": digits.std,
    }
    save_checkpoint(path, small_mlp, {"architecture": spec, "data": {"source": "digits", "seed": 0}})
    return path


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the console entry point in-process; returns (exit code, stdout, stderr)."""
    import sys

    from nonsingular.cli import main

    monkeypatch.setattr(sys, "argv", ["nonsingular", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err
