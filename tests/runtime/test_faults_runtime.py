"""What runs promise beyond bad input (docs/reliability.md): SIGINT/SIGTERM stop them within seconds keeping every
finished unit; locks keep two runs from writing one folder or training one cache entry twice; a full disk or an
I/O error leaves earlier files intact with one line; an address-space limit shrinks the bound's chunks or fails
with one line instead of killing the process."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from nonsingular.errors import ResourceError
from nonsingular.runtime import FileLock, LockedError, Stopped, atomic_write, check_stop, stop_on_signals
from nonsingular.runtime.memory import within_memory
from tests.support import run_cli

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}


def _no_temporaries(folder: Path) -> bool:
    return not list(folder.rglob(".*.tmp"))


# ---------------------------------------------------------------------------------------------------- signals
def test_a_signal_is_honoured_at_the_next_check_and_the_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stop, stop_on_signals(grace_s=30):
        os.kill(os.getpid(), signal.SIGTERM)
        done = sum(range(1000))  # the unit in progress finishes: the signal only set a request
        check_stop()
    assert done == 499500 and stop.value.exit_code == 143 and stop.value.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
    check_stop()  # no request outside the block


def test_a_stop_nobody_checks_is_raised_after_the_grace_period():
    start = time.monotonic()
    with pytest.raises(Stopped) as stop, stop_on_signals(grace_s=0.3):
        os.kill(os.getpid(), signal.SIGINT)
        while time.monotonic() - start < 10:  # a long unit with no check
            time.sleep(0.01)
    assert time.monotonic() - start < 5 and stop.value.exit_code == 130


def test_a_second_signal_stops_at_once():
    with pytest.raises(Stopped), stop_on_signals(grace_s=60):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # never reached in full: the second signal raises
        pytest.fail("the second signal did not stop the run")


def test_a_stopped_certify_writes_nothing_and_says_how_to_rerun(monkeypatch, capsys, checkpoint, tmp_path):
    import nonsingular.cli.certify_cmd as certify_cmd

    def slow_certify(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # certify keeps nothing until it finishes: the stop comes at once
        pytest.fail("certify was not stopped")

    monkeypatch.setattr(certify_cmd, "run_certify", slow_certify)
    out = tmp_path / "cert.json"
    start = time.monotonic()
    code, _, err = run_cli(monkeypatch, capsys, "certify", "-c", str(checkpoint), "--steps", "0", "--out", str(out))
    assert code == 143 and time.monotonic() - start < 5
    assert err.strip().count("\n") == 0 and "stopped by SIGTERM: kept nothing changed" in err
    assert "resume with: nonsingular certify -c" in err and not out.exists()


def test_sigterm_stops_training_within_seconds_keeping_the_finished_epochs(tmp_path):
    out = tmp_path / "m.safetensors"
    cmd = [sys.executable, "-m", "nonsingular", "train", "--out", str(out), "--epochs", "200", "-q"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    metrics = tmp_path / "m.metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # two epochs finished
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert time.monotonic() - sent < 10  # the grace period (3 s) and the interpreter's exit
    (line,) = err.strip().splitlines()
    assert line.startswith(f"stopped by SIGTERM: kept {out} (") and "finished epoch(s)" in line
    assert line.endswith("--epochs 200 -q --resume")
    from nonsingular.models.checkpoint import read_metadata

    assert read_metadata(out)["training"]["epochs_done"] >= 2 and _no_temporaries(tmp_path)
    # the resume command continues the run (one more epoch here, to keep the test short)
    resumed = subprocess.run(
        [sys.executable, "-m", "nonsingular", "train", "--out", str(out), "--resume", "-q", "--epochs", "3"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    done = read_metadata(out)["training"]["epochs_done"]
    assert (resumed.returncode == 0 and done == 3) or "more than epochs=3" in resumed.stderr, resumed.stderr


# ---------------------------------------------------------------------------------------------------- locks
def test_a_second_holder_is_refused_with_the_holder_named(tmp_path):
    first = FileLock(tmp_path / ".lock", "the folder")
    with first, pytest.raises(LockedError, match=rf"the folder is in use by another run \(pid {os.getpid()} on"):
        FileLock(tmp_path / ".lock", "the folder", wait=0.2).acquire()
    assert not (tmp_path / ".lock").exists()
    with FileLock(tmp_path / ".lock", "the folder"):  # free again
        pass


def test_a_waiter_gets_the_lock_when_the_holder_releases_it(tmp_path):
    holder = FileLock(tmp_path / ".lock", "the entry")
    holder.acquire()
    threading.Timer(0.5, holder.release).start()
    start = time.monotonic()
    with FileLock(tmp_path / ".lock", "the entry", wait=None, poll_s=0.05):
        assert time.monotonic() - start >= 0.4


def test_stale_locks_are_broken_dead_pid_on_this_host_or_old_elsewhere(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "time": time.time()}))
    with FileLock(lock, "x"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": time.time()}))
    with pytest.raises(LockedError):
        FileLock(lock, "x", stale_s=60).acquire()  # another host, refreshed recently: live
    old = time.time() - 120
    os.utime(lock, (old, old))
    with FileLock(lock, "x", stale_s=60):  # not refreshed for 120 s > 60 s: its host is gone
        pass


def test_a_second_study_or_training_on_the_same_output_refuses(monkeypatch, capsys, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}  # a live run
    (out / ".lock").write_text(json.dumps(holder))
    code, _, err = run_cli(monkeypatch, capsys, "study", "--config", "study", "--out", str(out), "--fresh")
    assert code == 2 and f"is in use by another run (pid {os.getpid()}" in err and err.strip().count("\n") == 0
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    ckpt = tmp_path / "m.safetensors"
    Path(f"{ckpt}.lock").write_text(json.dumps(holder))
    code, _, err = run_cli(monkeypatch, capsys, "train", "--out", str(ckpt), "--epochs", "1")
    assert code == 2 and "training run" in err and "in use by another run" in err and not ckpt.exists()


TINY = """
name = "tiny"
n_examples = 24
[training]
epochs = 1
[attack]
steps = 2
[grid]
eps_x = [0.05]
eps_w = [0.002]
[certify]
methods = ["ibp"]
[radius]
enabled = false
[scale]
enabled = false
[headline]
eps_x = 0.05
eps_w = 0.002
[[models]]
name = "standard"
objective = "standard"
[[models]]
name = "second"
objective = "standard"
options = { lr = 0.01 }
"""


_VARYING = {"seconds", "eval_seconds", "cached", "cache_file"}


def _comparable(value):
    """The study's numbers, without what legitimately differs between runs (times, cache provenance)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if k not in _VARYING}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def test_two_concurrent_studies_on_one_cache_train_once_and_agree(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nonsingular",
                "study",
                "--config",
                str(config),
                "--out",
                str(tmp_path / name),
                "--cache",
                str(cache),
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    a, b = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("a", "b"))
    assert _comparable(a["models"]) == _comparable(b["models"])
    assert len(list(cache.glob("*.safetensors"))) == 2 and not list(cache.glob("*.lock"))
    for name in a["models"]:  # each model trained by exactly one of the two runs, the other waited and reused it
        cached = [r["runs"][0]["cached"] for r in (a["models"][name], b["models"][name])]
        assert sorted(cached) == [False, True], (name, cached)


@pytest.mark.parametrize("workers", ["1", pytest.param("2", marks=pytest.mark.slow)])  # 2: about a minute
def test_sigint_stops_a_study_between_pieces_and_the_printed_command_resumes_it(tmp_path, workers):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = [sys.executable, "-m", "nonsingular", "study", "--config", str(config), "--out", str(out), "--workers"]
    cmd += [workers, "--cache", str(cache)]  # with 2 workers the stop also ends the worker processes
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "state.json").exists():  # the first piece is recorded
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.monotonic() - sent < 10, err  # 3 s grace, then the exit
    (line,) = [s for s in err.splitlines() if s.startswith("stopped by SIGINT")]
    kept = len(json.loads((out / "state.json").read_text())["values"])
    assert f"kept {kept} finished piece(s) in {out / 'state.json'}" in line and kept >= 1
    assert not (out / ".lock").exists() and not (out / "results.json").exists() and _no_temporaries(tmp_path)
    resume = line.split("resume with: ", 1)[1].split()
    assert resume[:2] == ["nonsingular", "study"]
    done = subprocess.run([sys.executable, "-m", *resume], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "results.json").exists()


# ---------------------------------------------------------------------------------------------------- full disks
@pytest.mark.parametrize("where", ["write", "replace"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_write_keeps_the_earlier_file(monkeypatch, tmp_path, where, code):
    path = tmp_path / "results.json"
    path.write_text("earlier")

    def failing_write(tmp: str) -> None:
        Path(tmp).write_text("half of the new cont")
        if where == "write":
            raise OSError(code, os.strerror(code))

    if where == "replace":
        monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(code, os.strerror(code))))
    with pytest.raises(ResourceError) as err:
        atomic_write(path, failing_write)
    assert str(err.value) == f"cannot write {path}: {os.strerror(code)}; the previous results.json is unchanged"
    assert path.read_text() == "earlier" and _no_temporaries(tmp_path)


def test_a_full_disk_stops_the_cli_with_one_line_and_keeps_the_earlier_report(
    monkeypatch, capsys, checkpoint, tmp_path
):
    out = tmp_path / "cert.json"
    out.write_text("{}")
    real_replace = os.replace

    def full(src, dst):
        if str(dst) == str(out):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    args = ["certify", "-c", str(checkpoint), "--steps", "0", "--method", "ibp", "--n-examples", "4"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", str(out), "--force")
    assert code == 2 and err.strip().count("\n") == 0 and "No space left on device" in err and "is unchanged" in err
    assert out.read_text() == "{}" and _no_temporaries(tmp_path)


def test_a_full_disk_keeps_the_study_state_and_the_checkpoint(monkeypatch, tmp_path, small_mlp, checkpoint):
    from nonsingular.models import save_checkpoint
    from nonsingular.models.checkpoint import read_metadata
    from nonsingular.study.runner import StudyState

    metadata = read_metadata(checkpoint)
    state = StudyState(tmp_path / "state.json", "fp")
    state.put("piece/1", {"value": 1})
    before = (tmp_path / "state.json").read_text()
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, small_mlp, metadata)
    saved = ckpt.read_bytes()
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(ResourceError, match=r"state\.json: Input/output error; the previous state\.json is unchanged"):
        state.put("piece/2", {"value": 2})
    with pytest.raises(ResourceError, match=r"the previous m\.safetensors is unchanged"):
        save_checkpoint(ckpt, small_mlp, {**metadata, "other": 1})
    assert (tmp_path / "state.json").read_text() == before and ckpt.read_bytes() == saved
    assert _no_temporaries(tmp_path)


# ---------------------------------------------------------------------------------------------------- memory
_LIMITED = textwrap.dedent(
    """
    import logging, resource, sys
    import torch
    from torch import nn
    from nonsingular import ThreatModel
    from nonsingular.bounds import margin_bounds
    from nonsingular.bounds import engine
    from nonsingular.errors import ResourceError
    from nonsingular.runtime.allocator import limit_heap_retention

    # Every block of 32 KiB or more mapped and unmapped by the kernel, so that the limit below is the only
    # room there is: blocks the reference run freed must not stay in the heap for the limited run to reuse.
    limit_heap_retention(32 * 1024)
    engine.CPU_CHUNK_MB = float("inf")  # chunks as large as the budget allows, not the CPU's speed cap
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).double()
    x, y = torch.rand(16, 1, 16, 16, dtype=torch.float64), torch.zeros(16, dtype=torch.long)
    threat = ThreatModel(eps_x=0.05)
    with torch.no_grad():
        reference = margin_bounds(model, x, y, threat, "crown", memory_mb=8).lower
    size = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[1]) * 2**20, resource.RLIM_INFINITY))
    try:
        with torch.no_grad():
            got = margin_bounds(model, x, y, threat, "crown", memory_mb=4096).lower
    except ResourceError as err:
        print("ResourceError:", err)
        sys.exit(3)
    print("difference", float((got - reference).abs().max()))
    """
)


def _limited(extra_mb: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _LIMITED, str(extra_mb)], env=ENV, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc")
def test_an_address_space_limit_shrinks_the_bound_chunks_instead_of_killing():
    done = _limited(120)  # far below what a 4 GiB budget's chunks would take
    assert done.returncode == 0, done.stderr
    assert "ran out of memory with a 4096 MiB budget: retrying with 2048 MiB" in done.stdout
    assert float(done.stdout.split("difference")[-1]) < 1e-12  # the same bounds, in smaller chunks


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc")
def test_an_address_space_limit_too_small_for_any_chunk_fails_with_one_line():
    done = _limited(0)
    assert done.returncode == 3, done.stderr
    (line,) = [s for s in done.stdout.splitlines() if s.startswith("ResourceError")]
    assert "the crown bound ran out of memory even with a 1 MiB budget (from 4096 MiB)" in line


def test_only_allocation_failures_are_retried():
    calls = []

    def run(budget: float) -> float:
        calls.append(budget)
        if budget > 100:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return budget

    assert within_memory(run, 400, "x") == 100 and calls == [400, 200, 100]
    with pytest.raises(RuntimeError, match="a bug"):
        within_memory(lambda b: (_ for _ in ()).throw(RuntimeError("a bug")), 400, "x")


def test_the_cli_reports_an_exhausted_memory_in_one_line(monkeypatch, capsys, checkpoint):
    import nonsingular.cli.certify_cmd as certify_cmd

    monkeypatch.setattr(certify_cmd, "run_certify", lambda *a, **k: torch.empty(2**62, dtype=torch.uint8))
    code, _, err = run_cli(monkeypatch, capsys, "certify", "-c", str(checkpoint), "--steps", "0")
    assert code == 2 and err.strip().count("\n") == 0 and "out of memory" in err
