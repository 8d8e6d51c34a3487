"""Where the time of our per-example joint PGD goes, next to input-only PGD (torch.profiler, CPU).

    .venv/bin/python -m benchmarks.profile_joint [--setting mnist-mlp] [--threads 2] [--top 12]

Same model, batch, steps and step sizes as benchmarks.attacks; one warm-up run, then one profiled run of
each attack. Prints, per attack, the operators by self time and the matmul share of the total: what the
joint attack adds beyond the input attack's matrix products is the Lemma 1 term (a row l1 norm of each
layer input, its gradient, and the sign step on t) plus the hooks that add it to the pre-activations.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from nonsingular import PGD, ThreatModel

from .attacks import EPS as EPS_BY_SETTING
from .attacks import STEPS, build

MATMUL_OPS = {"aten::addmm", "aten::mm", "aten::matmul", "aten::linear", "aten::bmm"}


def profile_attack(setting: str, joint: bool, top: int) -> tuple[float, float, list[tuple[str, float, int]]]:
    """(total self CPU ms, matmul self ms, [(op, self ms, calls)]) of one attack run."""
    model, x, y = build(setting)
    eps_x, eps_w = EPS_BY_SETTING[setting]
    threat = ThreatModel(eps_x=eps_x, eps_w=eps_w if joint else 0.0)
    attack = PGD(steps=STEPS, random_start=False, batch_size=len(x))
    attack(model, x, y, threat)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        attack(model, x, y, threat)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1000
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1000
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return total, matmul, [(e.key, e.self_cpu_time_total / 1000, e.count) for e in rows]


def profile_both(setting: str, top: int = 10) -> dict[str, Any]:
    """Both attacks' totals and the `top` operators by joint self time, with their input-only times (ms)."""
    in_total, in_matmul, in_rows = profile_attack(setting, False, 1000)
    j_total, j_matmul, j_rows = profile_attack(setting, True, top)
    input_ms = {key: ms for key, ms, _ in in_rows}
    return {
        "input_total": in_total,
        "input_matmul": in_matmul,
        "joint_total": j_total,
        "joint_matmul": j_matmul,
        "ops": [(key, input_ms.get(key, 0.0), ms) for key, ms, _ in j_rows],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="mnist-mlp", choices=sorted(EPS_BY_SETTING))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    totals = {}
    for label, joint in (("input-only", False), ("joint per-example (Lemma 1)", True)):
        total, matmul, rows = profile_attack(args.setting, joint, args.top)
        totals[label] = total
        print(f"\n{label}: {total:.1f} ms self CPU in total, matmuls {matmul:.1f} ms ({100 * matmul / total:.0f}%)")
        print("| op | self ms | calls | share |\n| --- | --- | --- | --- |")
        for key, ms, calls in rows:
            print(f"| {key} | {ms:.1f} | {calls} | {100 * ms / total:.1f}% |")
    base, joint_total = totals["input-only"], totals["joint per-example (Lemma 1)"]
    print(f"\njoint / input-only self CPU time: {joint_total / base:.2f}x")


if __name__ == "__main__":
    main()
