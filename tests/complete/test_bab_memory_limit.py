"""Branch and bound under an address-space limit (RLIMIT_AS, docs/reliability.md): when the machine refuses an
allocation, the domain store stays as it was and the search ends with `unknown` and a reason naming the memory,
never with a crash or a kill. Each case runs in a subprocess that sets the limit just above what it already uses
(the store's budget, 4 GiB here, is far above the limit: the machine, not the budget, says no)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
_LIMIT = """
import resource, sys
def limit(extra_mb):
    size = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + extra_mb * 2**20, resource.RLIM_INFINITY))
"""
_STORE = _LIMIT + textwrap.dedent(
    """
    import torch
    from nonsingular.complete.domains import DomainStore, MemoryBudgetExceeded

    store = DomainStore({"x": torch.zeros(2**17, dtype=torch.float64)}, memory_mb=4096)  # 1 MiB rows, 64 allocated
    limit(200)
    pushed = 0
    try:
        while True:
            rows = torch.full((32, 2**17), float(pushed), dtype=torch.float64)
            store.push({"x": rows}, torch.arange(pushed, pushed + 32, dtype=torch.float64))
            pushed += 32
    except MemoryBudgetExceeded as err:
        print("MemoryBudgetExceeded:", err)
    print("pushed", pushed, "open", len(store))
    rows, score = store.pop_worst(40)
    print("popped", score.tolist() == list(range(40)), rows["x"][:, 0].tolist() == [0.0] * 32 + [32.0] * 8)
    """
)
_SEARCH = _LIMIT + textwrap.dedent(
    """
    import torch
    from torch import nn
    from nonsingular.complete import branch_and_bound

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 300), nn.ReLU(), nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 2))
    model = model.double().eval()
    lo, hi = -torch.ones(40, dtype=torch.float64), torch.ones(40, dtype=torch.float64)
    with torch.no_grad():
        gap = (lambda y: y[:, 0] - y[:, 1])(model(torch.rand(20000, 40, dtype=torch.float64) * 2 - 1))
    # y0 - y1 <= d well below the sampled gaps: no attack finds it, the root bound does not refute it, and the
    # search needs thousands of domains (batches of 512 domains, 1024 children bounded at once)
    d = (gap.min() - 1.5 * (gap.max() - gap.min())).reshape(1)
    extra, timeout = int(sys.argv[1]), float(sys.argv[2])
    if extra >= 0:
        limit(extra)
    r = branch_and_bound(model, lo, hi, torch.tensor([[1.0, -1.0]], dtype=torch.float64), d, timeout=timeout,
                         memory_mb=4096, batch_domains=512)
    print("status", r.status.value)
    print("reason", r.reason)
    """
)


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *args], env=ENV, capture_output=True, text=True, timeout=180)


pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc")


def test_a_store_the_machine_cannot_grow_says_so_and_keeps_its_domains():
    done = _run(_STORE)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("MemoryBudgetExceeded: out of memory growing the domain store to ")
    pushed, still_open = (int(t) for t in lines[1].split()[1::2])
    assert pushed >= 64 and still_open == pushed  # the failed push changed nothing
    assert lines[2] == "popped True True"  # best-first order and the rows' contents are intact


@pytest.mark.parametrize("extra_mb", [20, 150])
def test_a_search_under_an_address_space_limit_ends_unknown_not_killed(extra_mb):
    done = _run(_SEARCH, str(extra_mb), "60")
    assert done.returncode == 0, done.stderr  # no traceback, no kill
    assert done.stdout.splitlines()[0] == "status unknown", done.stdout
    assert "out of memory" in done.stdout.splitlines()[1]


def test_the_same_search_without_the_limit_runs_until_its_timeout():
    done = _run(_SEARCH, "-1", "2")  # the control: the limit, not the property, ended the runs above
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "status timeout", done.stdout
