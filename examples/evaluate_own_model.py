"""Evaluate your own PyTorch model under input-only, weight-only and joint attacks, in both scopes.

    python examples/evaluate_own_model.py                      # about 20 s on one core
    python examples/evaluate_own_model.py --epochs 1 --n-examples 40 --steps 3   # smoke run

Any nn.Module built from Linear / Conv2d / ReLU layers that takes inputs in the data's scale ([0, 1]) works:
put the normalisation inside the model, so eps_x is in data units. Here a small MLP is trained for a few
epochs on the bundled digits; replace `my_model` with yours (and `load_state_dict` your weights).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from nonsingular import PGD, Normalize, ThreatModel, load_digits
from nonsingular.evaluation import evaluate_robustness


def my_model(data) -> nn.Module:
    """Your model: normalisation first, then any Linear/Conv2d/ReLU stack."""
    return nn.Sequential(
        Normalize(data.mean, data.std),
        nn.Flatten(),
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def run(epochs: int = 10, n_examples: int = 200, steps: int = 20) -> dict[str, float | None]:
    """Train `my_model` briefly, evaluate it; returns {"clean", "<kind> <scope>": accuracy}."""
    torch.manual_seed(0)
    data = load_digits()
    model = my_model(data)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(data.y_train), 64):
            loss = nn.functional.cross_entropy(model(data.x_train[i : i + 64]), data.y_train[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    threat = ThreatModel(eps_x=0.05, eps_w=0.002)  # l_inf inputs; element-wise absolute weights
    report = evaluate_robustness(
        model, data.x_test[:n_examples], data.y_test[:n_examples], threat, PGD(steps=steps, seed=0)
    )
    print(f"clean accuracy {100 * report.clean_accuracy:.1f}% on {report.n_examples} examples; threat {threat}")
    out: dict[str, float | None] = {"clean": report.clean_accuracy}
    for label, cell in report.labelled_cells():
        print(f"  {label:<22} {'-' if cell.accuracy is None else f'{100 * cell.accuracy:.1f}%'}")
        out[label] = cell.accuracy
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-examples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    run(args.epochs, args.n_examples, args.steps)
