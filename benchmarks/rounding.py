"""How many certificates the floating-point error of the executed model removes (bounds/rounding.py).

Trained models (the digits MLP 64-256-256-10 of benchmarks/attacks.py and a SmallCNN trained 3 epochs on the
digits), every test example, IBP and CROWN at three joint threats, executed in float32, in float32 with TF32
products (u = 2^-11, as on a GPU with TF32 allowed) and in bf16; and the Jia-Rinard style cancellation networks
of tests/bounds/test_execution_rounding.py (one example each, certified by every exact bound, all flipped by a
float32 execution inside the box).

    python -m benchmarks.rounding [--out rounding.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nonsingular import ThreatModel
from nonsingular.bounds import margin_bounds
from nonsingular.datasets import load_digits
from nonsingular.models import SmallCNN

from .attacks import build

_TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(_TESTS), str(_TESTS / "bounds")]  # the constructions are the tests' own networks

THREATS = ((0.01, 0.0005), (0.02, 0.001), (0.05, 0.0))
METHODS = ("ibp", "crown")


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    data = load_digits()
    model = SmallCNN(data.input_shape, 10, data.mean, data.std, channels=(8, 16), hidden=64)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        perm = torch.randperm(len(data.y_train), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _counts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, method: str) -> dict[str, Any]:
    with torch.no_grad():
        bounds = margin_bounds(model, x.double(), y, threat, method)
    return {
        "exact": int((bounds.worst_exact > 0).sum()),
        "executed": int(bounds.certified.sum()),
        "removed": int(bounds.removed_by_rounding.sum()),
        "max_error": float(bounds.execution_error.max()) if bounds.execution_error is not None else 0.0,
    }


def trained_models() -> list[dict[str, Any]]:
    mlp, x, y = build("digits")
    rows = []
    for name, model in (("digits MLP 64-256-256-10", mlp), ("digits SmallCNN (8, 16) x 64", _cnn())):
        for eps_x, eps_w in THREATS:
            threat = ThreatModel(eps_x=eps_x, eps_w=eps_w)
            for method in METHODS:
                row: dict[str, Any] = {"model": name, "eps_x": eps_x, "eps_w": eps_w, "method": method, "n": len(y)}
                row["float32"] = _counts(model, x, y, threat, method)
                previous = torch.get_float32_matmul_precision()
                torch.set_float32_matmul_precision("high")  # TF32 products: u = 2^-11 in every Linear/Conv
                try:
                    row["tf32"] = _counts(model, x, y, threat, method)
                finally:
                    torch.set_float32_matmul_precision(previous)
                row["bf16"] = _counts(model.to(torch.bfloat16), x, y, threat, method)
                model.float()
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def constructions() -> list[dict[str, Any]]:
    from test_execution_rounding import _cancellation, _deep_cancellation

    cases = [
        ("cancellation 1-2-2", _cancellation(), [[4.5]], ThreatModel(eps_x=0.6, domain=(0.0, 10.0))),
        (
            "deep cancellation 3-6-6-2, joint",
            _deep_cancellation(),
            [[4.5, 0.2, 0.3]],
            ThreatModel(eps_x=0.6, eps_w=1e-12, domain=(-10.0, 10.0)),
        ),
    ]
    rows = []
    for name, model, point, threat in cases:
        x, y = torch.tensor(point), torch.tensor([0])
        for method in ("ibp", "crown", "alpha-crown"):
            rows.append({"model": name, "method": method, **_counts(model, x, y, threat, method)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    report = {"trained": trained_models(), "constructions": constructions()}
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report["constructions"], indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
