"""Our CROWN and alpha-CROWN beside auto_LiRPA's on CNNs under input-only threats (the case it supports),
per example, plus our joint-threat certified accuracy next to PGD (no peer certifies conv weights).

    PYTHONPATH=/path/to/auto_LiRPA .venv/bin/python -m benchmarks.compare_lirpa_cnn \
        --checkpoint cnn.safetensors [--eps-x 0.02] [--n-examples 50] [--alpha-steps 20]

Both tools get the same problem: the input box after the model's normalisation (an exact box map), the rest of
the network in float64, and the margins z_y - z_k as the specification. Printed per method: certified accuracy,
the median worst-margin lower bound, wall and CPU seconds per example (on a shared machine the CPU time is the
stable figure), and per example how our bound compares with
auto_LiRPA's (>= 0: ours at least as tight). auto_LiRPA is never a dependency (see compare_lirpa.py); without it
only our numbers are printed. Our peak resident memory is measured before auto_LiRPA runs.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import resource
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nonsingular import ThreatModel
from nonsingular.bounds import margin_bounds
from nonsingular.datasets import load_data
from nonsingular.models import Normalize, load_checkpoint


def _worst(lower: Tensor, y: Tensor) -> Tensor:
    return lower.masked_fill(torch.nn.functional.one_hot(y, lower.shape[1]).bool(), float("inf")).amin(dim=1)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    alpha_steps: int,
    methods: tuple[str, ...],
    alpha_final_only: bool = False,
) -> dict[str, Any]:
    out = {}
    for method in ("ibp", *methods):
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            lower = margin_bounds(
                model, x, y, threat, method, alpha_steps=alpha_steps, alpha_final_only=alpha_final_only
            ).lower
        out[method] = {
            "worst": _worst(lower, y),
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
            "peak_rss_mb": _peak_mb(),
        }
    return out


def lirpa(
    model: nn.Sequential, x: Tensor, y: Tensor, threat: ThreatModel, alpha_steps: int, methods: tuple[str, ...]
) -> dict[str, Any]:
    """auto_LiRPA's CROWN and alpha-CROWN on the same input box (input-only threat)."""
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    layers = list(model)
    if not isinstance(layers[0], Normalize):
        raise ValueError("expected a Sequential that starts with Normalize")
    lb, ub = threat.input_bounds(x)
    lb, ub, x_hat = (layers[0](t) for t in (lb, ub, x))
    net = copy.deepcopy(nn.Sequential(*layers[1:])).double().eval()
    k = int(model(x[:1]).shape[1])
    eye = torch.eye(k, dtype=torch.float64)
    spec = eye[y][:, None, :] - eye[None, :, :]
    out = {}
    for method, label in (("backward", "crown"), ("alpha-CROWN", "alpha-crown")):
        if label not in methods:
            continue
        opts = {"optimize_bound_args": {"iteration": alpha_steps}}
        bounded = BoundedModule(net, torch.zeros_like(x_hat[:1]), bound_opts=opts, device="cpu", verbose=False)
        t0, c0 = time.perf_counter(), time.process_time()
        xb = BoundedTensor(x_hat, PerturbationLpNorm(norm=float("inf"), x_L=lb, x_U=ub))
        default = torch.get_default_dtype()
        try:
            # auto_LiRPA creates some relaxation tensors in the default dtype; make it float64 like ours.
            torch.set_default_dtype(torch.float64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lower, _ = bounded.compute_bounds(x=(xb,), C=spec, method=method, bound_upper=False)
        finally:
            torch.set_default_dtype(default)
        lower = lower.detach().masked_fill(torch.nn.functional.one_hot(y, k).bool(), 0.0)
        out[label] = {
            "worst": _worst(lower, y),
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--eps-x", type=float, default=0.02)
    parser.add_argument("--n-examples", type=int, default=50)
    parser.add_argument("--alpha-steps", type=int, default=20)
    parser.add_argument("--methods", default="crown,alpha-crown", help="crown and/or alpha-crown (ibp always runs)")
    parser.add_argument(
        "--alpha-slopes",
        choices=("all", "final"),
        default="all",
        help="our alpha-CROWN: every pass's slopes (all) or the final margins' only (final, auto_LiRPA's default)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    data = load_data(ckpt.metadata.get("data", {}).get("source", "digits"))
    model = ckpt.model.double().eval()
    x, y = data.x_test[: args.n_examples].double(), data.y_test[: args.n_examples]
    threat = ThreatModel(eps_x=args.eps_x, domain=data.domain)
    n = len(y)
    print(f"{args.checkpoint.name}: {n} examples, threat {threat}")
    report: dict[str, Any] = {"model": args.checkpoint.name, "eps_x": args.eps_x, "n": n, "alpha": args.alpha_slopes}
    methods = tuple(m.strip() for m in args.methods.split(","))
    if not methods or not set(methods) <= {"crown", "alpha-crown"}:
        raise SystemExit(f"--methods takes crown and/or alpha-crown, got {args.methods!r}")
    mine = ours(model, x, y, threat, args.alpha_steps, methods, args.alpha_slopes == "final")
    theirs = lirpa(model, x, y, threat, args.alpha_steps, methods) if importlib.util.find_spec("auto_LiRPA") else {}
    if theirs:
        import auto_LiRPA

        report["auto_LiRPA"] = auto_LiRPA.__version__
    for method, r in mine.items():
        row = {
            "certified": float((r["worst"] > 0).double().mean()),
            "median_lb": float(r["worst"].median()),
            "s_per_example": r["seconds"] / n,
            "cpu_s_per_example": r["cpu_seconds"] / n,
            "peak_rss_mb": r["peak_rss_mb"],
        }
        if method in theirs:
            t = theirs[method]
            diff = r["worst"] - t["worst"]
            row |= {
                "lirpa_certified": float((t["worst"] > 0).double().mean()),
                "lirpa_median_lb": float(t["worst"].median()),
                "lirpa_s_per_example": t["seconds"] / n,
                "lirpa_cpu_s_per_example": t["cpu_seconds"] / n,
                "ours_at_least_as_tight": int((diff >= -1e-9).sum()),
                "min_diff": float(diff.min()),
                "median_diff": float(diff.median()),
            }
        report[method] = row
        print(method, json.dumps(row))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
