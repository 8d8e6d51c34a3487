"""Strength vs time: PGD-20, APGD-CE, APGD-T and the APGD ensemble, ours vs torchattacks' APGD/APGD-T.

Run on checkpoints written by `nonsingular train` (e.g. the digits models of `make demo`):

    python -m benchmarks.strength runs/demo-cache/standard.safetensors runs/demo-cache/input-AT.safetensors

For each model and threat it prints checked robust accuracy (%), the number of examples a method leaves
standing that the strongest method here broke ("missed"), and wall time, as a markdown table. Input-only
threats are also attacked by torchattacks' APGD (CE) and APGD-T (DLR, all targets) when it is importable
(`make bench` installs it); joint threats by a strong fixed-step reference (PGD 100 steps x 4 restarts with
the CE and the margin loss, per example through Lemma 1, which is exact for these MLPs). Every one of our
results goes through the checker; torchattacks' inputs are checked against the same box.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from nonsingular import APGD, PGD, AutoEnsemble, ThreatModel, check_attack
from nonsingular.attacks import targeted_dlr
from nonsingular.datasets import load_data
from nonsingular.models import load_checkpoint

THREATS = {
    "input eps_x 0.1": {"eps_x": 0.1},
    "joint 0.02/0.001 per-example": {"eps_x": 0.02, "eps_w": 0.001},
    "joint 0.05/0.002 shared": {"eps_x": 0.05, "eps_w": 0.002, "scope": "shared"},
}
#: --synthetic: the MLP 784-512-512-10 of benchmarks/attacks.py on 256 uniform inputs it labels itself.
SYNTHETIC_THREATS = {
    "input eps_x 0.02": {"eps_x": 0.02},
    "joint 0.01/0.0005 per-example": {"eps_x": 0.01, "eps_w": 0.0005},
    "joint 0.01/0.0005 shared": {"eps_x": 0.01, "eps_w": 0.0005, "scope": "shared"},
}

Method = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, ThreatModel], torch.Tensor]


def ours(attack) -> Method:
    def run(model, x, y, threat):
        result = attack(model, x, y, threat)
        check = check_attack(model, x, y, result)
        if not check.passed:
            raise RuntimeError(f"{attack!r} failed the check: {check.problems}")
        return check.correct

    return run


def strongest_fixed_step(model, x, y, threat):
    """Per example: correct only if PGD 100 x 4 restarts with CE and with margin both leave it correct."""
    correct = torch.ones(len(y), dtype=torch.bool)
    for loss in ("ce", "margin"):
        correct &= ours(PGD(steps=100, restarts=4, loss=loss))(model, x, y, threat)
    return correct


def apgd_t_ours(targets: int, steps: int) -> Method:
    def run(model, x, y, threat):
        correct = torch.ones(len(y), dtype=torch.bool)
        for k in range(1, targets + 1):
            correct &= ours(APGD(steps=steps, loss=targeted_dlr(k), seed=k))(model, x, y, threat)
        return correct

    return run


def torchattacks_method(name: str, steps: int) -> Method | None:
    try:
        import torchattacks
    except ImportError:
        return None

    def run(model, x, y, threat):
        if threat.perturbs_weights:
            raise ValueError("torchattacks perturbs inputs only")
        if name == "APGD":
            atk = torchattacks.APGD(model, norm="Linf", eps=threat.eps_x, steps=steps, n_restarts=1, loss="ce", seed=0)
        else:
            atk = torchattacks.APGDT(model, norm="Linf", eps=threat.eps_x, steps=steps, n_restarts=1, n_classes=10)
        x_adv = atk(x, y)
        assert float((x_adv.detach() - x).abs().max()) <= threat.eps_x + 1e-6
        with torch.no_grad():
            return model(x_adv).argmax(1) == y

    return run


def methods(steps: int, targets: int) -> dict[str, Method | None]:
    return {
        "PGD-20 (old default)": ours(PGD(steps=20)),
        f"APGD-CE {steps}": ours(APGD(steps=steps)),
        f"APGD-T {steps} x {targets} targets": apgd_t_ours(targets, steps),
        f"AutoEnsemble (steps={steps}, targets={targets}; new default)": ours(
            AutoEnsemble(steps=steps, targets=targets)
        ),
        f"torchattacks APGD (CE) {steps}": torchattacks_method("APGD", steps),
        f"torchattacks APGD-T {steps} x 9 targets": torchattacks_method("APGDT", steps),
        "PGD 100 x 4 restarts, CE and margin": strongest_fixed_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--synthetic", action="store_true", help="also the random MLP 784-512-512-10 (no data)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--n-examples", type=int, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| model | threat | method | robust acc. | missed | seconds |")
    print("|---|---|---|---:|---:|---:|")
    workloads = []
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        data = load_data(ckpt.metadata.get("data", {}).get("source", "digits"), seed=0)
        x, y = data.x_test[: args.n_examples], data.y_test[: args.n_examples]
        workloads.append((path.stem, ckpt.model, x, y, data.domain, THREATS))
    if args.synthetic:
        from .attacks import build

        model, x, y = build("mnist-mlp")
        workloads.append(("random MLP 784-512-512-10", model, x, y, (0.0, 1.0), SYNTHETIC_THREATS))
    for name, model, x, y, domain, threats in workloads:
        with torch.no_grad():
            clean = model(x).argmax(1) == y
        for label, kwargs in threats.items():
            threat = ThreatModel(**kwargs, domain=domain)
            PGD(steps=2)(model, x, y, threat)  # warm-up: first-call allocations are not any method's cost
            rows = []
            for method_name, method in methods(args.steps, args.targets).items():
                if method is None or (threat.perturbs_weights and method_name.startswith("torchattacks")):
                    continue
                if threat.scope.value == "shared" and method_name.startswith(("APGD-T", "PGD 100")):
                    continue  # per-example combinations do not give one shared perturbation
                t0 = time.perf_counter()
                robust = clean & method(model, x, y, threat)
                rows.append((method_name, robust, time.perf_counter() - t0))
            strongest = torch.stack([r for _, r, _ in rows]).all(dim=0)
            for method_name, robust, seconds in rows:
                missed = int((robust & ~strongest).sum())
                acc = 100 * float(robust.float().mean())
                print(f"| {name} | {label} | {method_name} | {acc:.1f}% | {missed} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
