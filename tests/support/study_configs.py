"""Study configurations small enough for tests (seconds) that several tests and benchmarks share."""

from __future__ import annotations

#: Two models (standard, input-AT) x two seeds on 24 digits, one epoch, PGD-2, one extra parametrization:
#: every unit kind of the study runner at its smallest (the workers, executor and Ray tests; the Ray benchmark).
TWO_MODELS_TWO_SEEDS = """
name = "workers"
n_examples = 24
seeds = [0, 1]
[training]
epochs = 1
[attack]
kind = "pgd"
steps = 2
loss = "margin"
headline_kind = "auto"
[grid]
eps_x = [0.05]
eps_w = [0.002]
[[grid.parametrizations]]
weight_ball = "operator"
weight_mode = "relative"
eps_w = [0.01, 0.05]
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
[[models]]
name = "input-AT"
objective = "pgd-at"
options = { eps_x = 0.05, attack_steps = 1 }
"""
