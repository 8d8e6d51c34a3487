"""The executor contract, on the local executors: a unit gets the results it depends on, its messages reach the
driver in order and before its result, a failing unit stops the run naming it, and the progress line counts
units per node. (The Ray executor is held to the same contract by tests/study/test_study_on_ray.py.)"""

from __future__ import annotations

import sys

import pytest

from nonsingular.errors import InputError
from nonsingular.runtime.executors import (
    InlineExecutor,
    ProcessPool,
    Unit,
    UnitError,
    UnitProgress,
    make_executor,
    run_units,
)


def _square(outbox, x: int) -> int:
    outbox.send(("tick", x))
    outbox.send(("tick", x + 100))
    return x * x


def _add(outbox, *inputs: int) -> int:
    outbox.send(("sum", sum(inputs)))
    return sum(inputs)


def _bad_input(outbox) -> None:
    raise InputError("the model file is empty")


def _bug(outbox) -> None:
    raise ZeroDivisionError("division by zero in layer 3")


UNITS = [
    Unit("a", _square, (3,)),
    Unit("b", _square, (4,)),
    Unit("c", _add, after=("a", "b")),
]


@pytest.fixture(scope="module")
def pool():
    """One pool for the module: spawning workers (each imports torch) is most of these tests' time."""
    with ProcessPool(2, threads=1) as made:
        yield made


@pytest.fixture(params=["inline", "pool"])
def executor(request, pool):
    return InlineExecutor() if request.param == "inline" else pool


def test_units_get_their_inputs_and_send_messages_before_their_result(executor):
    events: list[tuple[str, object]] = []
    results = run_units(
        executor,
        UNITS,
        lambda unit, message: events.append((unit, message)),
        on_result=lambda unit, result: events.append((unit, "done")),
    )
    assert results == {"a": 9, "b": 16, "c": 25}
    for unit, x in (("a", 3), ("b", 4)):
        mine = [m for u, m in events if u == unit]
        assert mine == [("tick", x), ("tick", x + 100), "done"]
    assert events.index(("c", ("sum", 25))) > max(events.index(("a", "done")), events.index(("b", "done")))


def test_a_unit_must_come_after_the_units_it_needs():
    with pytest.raises(ValueError, match="'c' needs"):
        run_units(InlineExecutor(), [UNITS[2], *UNITS[:2]], lambda unit, message: None)


def test_inline_raises_the_units_own_error():
    with pytest.raises(ZeroDivisionError, match="layer 3"):
        run_units(InlineExecutor(), [Unit("broken", _bug)], lambda unit, message: None)


def test_pool_names_the_failed_unit_in_one_line(pool):
    with pytest.raises(UnitError) as caught:
        run_units(pool, [Unit("broken", _bug)], lambda unit, message: None)
    text = str(caught.value)
    assert text.startswith("unit 'broken' failed on ")
    assert text.endswith("ZeroDivisionError: division by zero in layer 3") and "\n" not in text
    with pytest.raises(InputError, match=r"^unit 'bad' on .*: the model file is empty$"):
        run_units(pool, [Unit("bad", _bad_input)], lambda unit, message: None)


def test_progress_line_counts_units_per_node_and_restarts():
    progress = UnitProgress(total=5, done=1)
    progress.start("a", "n1")
    assert progress.label() == "units (1 running, 3 queued)"
    progress.start("b", "n2")
    progress.running.pop("a")
    progress.start("a", "n2")  # its worker died and it runs again
    assert progress.label() == "units (2 running, 2 queued, 1 restarted)"
    progress.start("c", "n1")
    assert progress.label() == "units (3 running, 1 queued, 1 restarted; n1: 1, n2: 2)"


def test_make_executor_refuses_what_cannot_run(monkeypatch):
    assert isinstance(make_executor("local", 1), InlineExecutor)
    with pytest.raises(InputError, match="unknown executor 'slurm'"):
        make_executor("slurm")
    with pytest.raises(InputError, match="--ray-address needs --executor ray"):
        make_executor("local", 1, "auto")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(InputError, match=r"pip install 'nonsingular\[ray\]'"):
        make_executor("ray")
