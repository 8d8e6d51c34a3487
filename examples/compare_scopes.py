"""Per-example vs shared weight perturbations: one model, weight-only attacks over a range of eps_w.

    python examples/compare_scopes.py                      # about 30 s on one core
    python examples/compare_scopes.py --epochs 1 --n-examples 30 --steps 2   # smoke run

Per-example scope: every input gets its own weight perturbation (the paper's threat, Lemma 1). Shared scope:
one perturbation for all inputs (a corrupted deployed model). The shared adversary is weaker, so its accuracy
is at least the per-example one, and both fall as eps_w grows.
"""

from __future__ import annotations

import argparse

import torch

from nonsingular import PGD, Scope, ThreatModel, load_digits
from nonsingular.evaluation import evaluate_cell
from nonsingular.training import TrainConfig, Trainer


def run(
    epochs: int = 10, n_examples: int = 200, steps: int = 20, radii: tuple[float, ...] = (0.0005, 0.001, 0.002, 0.004)
) -> dict[float, dict[str, float | None]]:
    """Train a digits MLP; returns {eps_w: {scope: weight-only accuracy}}."""
    data = load_digits()
    model = Trainer(TrainConfig(epochs=epochs, eval_steps=0, device="cpu"), data=data).fit().model
    x, y = data.x_test[:n_examples], data.y_test[:n_examples]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    attack = PGD(steps=steps, seed=0)
    out: dict[float, dict[str, float | None]] = {}
    print(f"clean {100 * float(clean.float().mean()):.1f}%\n  eps_w   per-example   shared")
    for eps_w in radii:
        out[eps_w] = {
            scope.value: evaluate_cell(model, x, y, ThreatModel(eps_w=eps_w, scope=scope), attack, clean).accuracy
            for scope in (Scope.PER_EXAMPLE, Scope.SHARED)
        }
        row = out[eps_w]
        print(f"  {eps_w:<7g} {100 * row['per-example']:10.1f}%  {100 * row['shared']:6.1f}%")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-examples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    run(args.epochs, args.n_examples, args.steps)
