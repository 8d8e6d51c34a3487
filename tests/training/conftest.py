"""Every training test runs torch on one thread (see the `one_thread` fixture in tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread: None) -> None:
    """Autouse wrapper: training's small matmuls are fastest on one thread."""
