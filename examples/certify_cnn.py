"""Certify a small CNN: certified accuracy (IBP) against the checked attack's, under a joint threat.

    python examples/certify_cnn.py                                   # about a minute on one core
    python examples/certify_cnn.py --epochs 1 --n-examples 20 --steps 2   # smoke run

Certified accuracy is a lower bound on the true robust accuracy and the attack's an upper bound, so every
certified example must survive the attack (`broken` counts violations: 0 for a sound bound). CROWN covers MLPs
only (Linear layers with ReLUs); interval bounds (IBP) cover convolutions.
"""

from __future__ import annotations

import argparse

from nonsingular import PGD, ThreatModel, load_digits
from nonsingular.evaluation import certify
from nonsingular.training import TrainConfig, Trainer


def run(epochs: int = 10, n_examples: int = 100, steps: int = 20) -> dict[str, float | None]:
    """Train a SmallCNN on the digits and certify it; returns {"attacked", "ibp"} accuracies."""
    data = load_digits()
    config = TrainConfig(architecture="cnn", arch_options={"channels": [8, 16], "hidden": 64}, epochs=epochs)
    model = Trainer(config.model_copy(update={"eval_steps": 0, "device": "cpu"}), data=data).fit().model
    threat = ThreatModel(eps_x=0.01, eps_w=0.0002)
    report = certify(
        model, data.x_test[:n_examples], data.y_test[:n_examples], threat, ["ibp"], PGD(steps=steps, seed=0)
    )
    print(f"threat {threat}: clean {100 * report.clean_accuracy:.1f}%, attacked {100 * report.attacked_accuracy:.1f}%")
    out: dict[str, float | None] = {"attacked": report.attacked_accuracy}
    for name, result in report.methods.items():
        print(f"  {name:<6} certified {100 * result.certified_accuracy:.1f}% (broken: {result.broken})")
        out[name] = result.certified_accuracy
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-examples", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    run(args.epochs, args.n_examples, args.steps)
