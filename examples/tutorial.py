"""The first-hour tutorial (docs/tutorial.md) as one script: the page's commands in the page's order.

    python examples/tutorial.py                   # the tutorial's settings: about 2.5 minutes on 2 CPU cores
    python examples/tutorial.py --out /tmp/t --epochs 1 --n-examples 40 --steps 3 --study tiny.toml  # smoke run

Each step prints the command (`$ nonsingular ...`) and then what it prints, as the page shows them. The
commands run in this process through the console script's entry point, so a step behaves exactly as typed
in a shell (including its one-line errors), without paying Python's and torch's start-up eight times.
Run it again at will: outputs in --out are replaced (the commands get --force; certify also writes its
JSON with --out, for the test) and the study resumes.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from nonsingular.cli import main as nonsingular_main

HERE = Path(__file__).resolve().parent


def nonsingular(*args: str) -> None:
    """Run `nonsingular ARGS` as the shell would; stop the tutorial if the command fails."""
    print(f"\n$ nonsingular {shlex.join(args)}", flush=True)
    try:
        nonsingular_main(list(args))
    except SystemExit as done:
        if done.code not in (0, None):
            raise SystemExit(f"`nonsingular {shlex.join(args)}` failed (exit status {done.code})") from None


def joint_cells(path: Path) -> dict[str, float]:
    """Clean and joint robust accuracy (fractions) of an `evaluate --out` file, per scope."""
    results = json.loads(path.read_text())
    joint = results["cells"]["joint"]
    return {
        "clean": results["clean_accuracy"],
        "per-example": joint["per-example"]["accuracy"],
        "shared": joint["shared"]["accuracy"],
    }


def compare(paths: dict[str, Path]) -> None:
    """The tutorial's comparison: clean and joint robust accuracy of each evaluated model, in percent."""
    print(f"\n{'model':<10} {'clean':>7} {'joint per-example':>18} {'joint shared':>13}")
    for name, path in paths.items():
        c = joint_cells(path)
        print(f"{name:<10} {100 * c['clean']:>6.1f}% {100 * c['per-example']:>17.1f}% {100 * c['shared']:>12.1f}%")


def run(out: Path, epochs: int, n_examples: int | None, steps: int | None, study: Path) -> Path:
    """Every step of the tutorial, writing into `out`; returns the study's report.html."""
    out.mkdir(parents=True, exist_ok=True)
    # Given only for smaller runs than the page's: fewer test examples and PGD steps for evaluate and certify.
    sample = [] if n_examples is None else ["--n-examples", str(n_examples)]
    attack = sample + ([] if steps is None else ["--steps", str(steps)])

    def evaluate(model: str) -> Path:  # eps_x: pixels in [0, 1]; eps_w: weight units
        result = out / f"{model}-eval.json"
        checkpoint = str(out / f"{model}.safetensors")
        nonsingular("evaluate", "--checkpoint", checkpoint, "--eps-x", "0.05", "--eps-w", "0.002", *attack,
                    "--out", str(result), "--force")  # fmt: skip
        return result

    def certify(model: str) -> None:
        checkpoint = str(out / f"{model}.safetensors")
        nonsingular("certify", "--checkpoint", checkpoint, "--eps-x", "0.01", "--eps-w", "0.0005", "--method", "all",
                    *attack, "--out", str(out / f"{model}-certify.json"), "--force")  # fmt: skip

    # Step 1: the install works.
    nonsingular("--version")
    # Step 2: a small model.
    nonsingular("train", "--out", str(out / "standard.safetensors"), "--epochs", str(epochs), "--force")
    # Step 3: attack it (input-only, weight-only, joint; per-example and shared scope), every result checked.
    standard = evaluate("standard")
    # Step 4: the per-example vs shared reading.
    cells = joint_cells(standard)
    print(f"\njoint threat: {100 * cells['per-example']:.1f}% per-example vs {100 * cells['shared']:.1f}% shared")
    # Step 5: certificates (lower bounds) at a smaller threat.
    certify("standard")
    # Step 6: joint adversarial training at the threat it is attacked with, then the same two commands.
    nonsingular("train", "--out", str(out / "joint.safetensors"), "--objective", "joint-at",
                "--eps-x", "0.05", "--eps-w", "0.002", "--epochs", str(epochs), "--force")  # fmt: skip
    joint = evaluate("joint")
    certify("joint")
    # Step 7: compare.
    compare({"standard": standard, "joint-AT": joint})
    # Step 8: the study: several models on a grid, one report to open in a browser.
    nonsingular("study", "--config", str(study), "--out", str(out / "study"), "--cache", str(out / "cache"))
    return out / "study" / "report.html"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tutorial"), help="folder for every output")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of both models")
    parser.add_argument("--n-examples", type=int, default=None, help="test examples to attack (default: all 360)")
    parser.add_argument("--steps", type=int, default=None, help="PGD steps (default: each command's own)")
    parser.add_argument("--study", type=Path, default=HERE / "tutorial_study.toml", help="study config file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    report = run(args.out, args.epochs, args.n_examples, args.steps, args.study)
    print(f"\nopen {report} in a browser (e.g. python -m webbrowser {report})")
