"""The attack-result checker's cost beside the attack's: per-example joint `--attack auto` on the random MLP
784-512-512-10 of `benchmarks.strength --synthetic` (256 inputs it labels itself, every one broken, so every one
is checked: the checker's worst case), and the input-only attack on the same model for scale.

    .venv/bin/python -m benchmarks.check_speed [--setting mnist-mlp] [--rounds 2] [--before REV]

One thread; CPU seconds of the process (not wall: the machine is shared). With `--before REV` the checker of
git revision REV runs on the same results in the same process, so that the before/after ratio does not depend
on the load; the attack's witness (its explicit weights) is the current one in both. Printed: seconds of the
attack (whose ensemble checks every replacement itself) and of each check (the fastest of `rounds`),
check / attack, and (attack + check) joint / input-only.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nonsingular import ThreatModel, check_attack
from nonsingular.attacks.factory import make_attack

from .attacks import build

JOINT = {"eps_x": 0.01, "eps_w": 0.0005}
INPUT = {"eps_x": 0.02}


def checker_at(revision: str) -> Callable[..., Any]:
    """`check_attack` as it was at a git revision, loaded beside the current package (it imports the current
    threat model, which both versions share)."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "-C", str(root), "show", f"{revision}:src/nonsingular/check/checker.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "checker_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("nonsingular.check.checker_before", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load the checker of {revision}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.check_attack  # type: ignore[no-any-return]


def timed(fn: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    """(fastest CPU seconds of this process over `rounds` calls, the last output). CPU time, not wall: on a
    machine shared by other jobs the wall time measures their load; with one thread the CPU time does not."""
    best, out = float("inf"), None
    for _ in range(rounds):
        start = time.process_time()
        out = fn()
        best = min(best, time.process_time() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="mnist-mlp")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", default=None, help="git revision whose checker runs beside the current one")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, x, y = build(args.setting)
    before = checker_at(args.before) if args.before else None
    attack = make_attack("auto")
    totals = {}
    for label, kwargs in (("input-only", INPUT), ("joint per-example", JOINT)):
        threat = ThreatModel(**kwargs)
        make_attack("pgd", steps=2)(model, x, y, threat)  # warm-up
        t_attack, result = timed(lambda threat=threat: attack(model, x, y, threat), args.rounds)
        t_check, check = timed(lambda result=result: check_attack(model, x, y, result), args.rounds)
        if not check.passed:
            raise RuntimeError(f"the check failed: {check.problems}")
        line = (
            f"{label:18} attack {t_attack:6.2f}s  check {t_check:6.2f}s  check/attack {t_check / t_attack:5.2f}  "
            f"robust {check.accuracy:.3f}"
        )
        if before is not None:
            t_old, old = timed(lambda result=result: before(model, x, y, result), args.rounds)
            same = torch.equal(old.correct, check.correct) and old.passed
            line += f"  | before: check {t_old:6.2f}s  ratio before/after {t_old / t_check:5.2f}  same verdict {same}"
        totals[label] = t_attack + t_check
        print(line, flush=True)
    print(f"total joint / total input-only: {totals['joint per-example'] / totals['input-only']:.2f}")


if __name__ == "__main__":
    main()
