"""Seeded tiny models and data shared by the tests (CPU, offline, fast)."""

from __future__ import annotations

import pytest
import torch

from nonsingular.datasets import Dataset, load_digits
from nonsingular.models import MLP
from tests.support import train_mlp


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regenerate-references",
        action="store_true",
        help="recompute the stored graph bound references (tests/data/graph_margins_reference.json) and write "
        "them before comparing; review the diff",
    )
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


@pytest.fixture
def one_thread():
    """Small matmuls are fastest on one thread, and two threads thrash badly on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
